import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

export const PLAN_TABLES = [{ name: 'plan_quotas', tenantColumn: 'tenant_id' }];

/** Every tenant's plan quota as a budget row (the plans projection, from the tenant events). */
export class PlanQuotas1700000000004 implements MigrationInterface {
  name = 'PlanQuotas1700000000004';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`CREATE TABLE "${s}".plan_quotas (LIKE "${s}".budgets INCLUDING ALL)`);
    for (const sql of tenantPolicySql(s, 'plan_quotas')) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".plan_quotas TO ${BILLING_ROLE}`);
    for (const sql of projectionShadowSql(s, BILLING_ROLE, PLAN_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".plan_quotas`);
    await q.query(`DROP TABLE "${BILLING_SCHEMA}".plan_quotas`);
  }
}
