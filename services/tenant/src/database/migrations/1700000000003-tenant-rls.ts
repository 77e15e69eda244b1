import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { TENANT_SCHEMA } from '../schema';

/** Row-level security: a tenant's row is visible only in its own scope (or the service's cross-tenant one). */
export class TenantRls1700000000003 implements MigrationInterface {
  name = 'TenantRls1700000000003';

  async up(q: QueryRunner): Promise<void> {
    for (const sql of [...tenantPolicySql(TENANT_SCHEMA, 'tenants', 'id'), ...tenantPolicySql(TENANT_SCHEMA, 'slug_reservations')]) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const t of ['tenants', 'slug_reservations']) {
      await q.query(`DROP POLICY tenant_isolation ON "${TENANT_SCHEMA}".${t}`);
      await q.query(`ALTER TABLE "${TENANT_SCHEMA}".${t} DISABLE ROW LEVEL SECURITY`);
    }
  }
}
