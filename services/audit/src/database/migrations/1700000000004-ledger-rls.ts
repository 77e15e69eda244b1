import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { AUDIT_SCHEMA } from '../schema';

/** Row-level security on the ledger: a tenant's entries only in its own scope (or the service's cross-tenant one). */
export class LedgerRls1700000000004 implements MigrationInterface {
  name = 'LedgerRls1700000000004';

  async up(q: QueryRunner): Promise<void> {
    for (const sql of tenantPolicySql(AUDIT_SCHEMA, 'ledger')) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP POLICY tenant_isolation ON "${AUDIT_SCHEMA}".ledger`);
    await q.query(`ALTER TABLE "${AUDIT_SCHEMA}".ledger DISABLE ROW LEVEL SECURITY`);
  }
}
