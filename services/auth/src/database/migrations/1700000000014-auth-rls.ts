import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { AUTH_SCHEMA } from '../schema';

const TABLES = ['email_reservations', 'credentials', 'users', 'sessions', 'api_keys', 'mfa_factors', 'recovery_codes', 'roles', 'teams', 'role_assignments'];

/** Row-level security on every tenant-scoped identity table. */
export class AuthRls1700000000014 implements MigrationInterface {
  name = 'AuthRls1700000000014';

  async up(q: QueryRunner): Promise<void> {
    for (const table of TABLES) for (const sql of tenantPolicySql(AUTH_SCHEMA, table)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const table of TABLES) {
      await q.query(`DROP POLICY tenant_isolation ON "${AUTH_SCHEMA}".${table}`);
      await q.query(`ALTER TABLE "${AUTH_SCHEMA}".${table} DISABLE ROW LEVEL SECURITY`);
    }
  }
}
