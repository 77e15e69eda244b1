import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

export const BUDGET_TABLES = [{ name: 'budgets', tenantColumn: 'tenant_id' }];

/** Budgets, as the usage projection keeps them from their events. */
export class Budgets1700000000002 implements MigrationInterface {
  name = 'Budgets1700000000002';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".budgets (
        tenant_id uuid NOT NULL,
        id uuid NOT NULL,
        name text NOT NULL,
        scope_kind text NOT NULL,
        scope_id text NOT NULL,
        unit text NOT NULL,
        "limit" numeric NOT NULL,
        period_unit text NOT NULL,
        time_zone text NOT NULL,
        thresholds jsonb NOT NULL,
        fail_mode text NOT NULL,
        version integer NOT NULL,
        position bigint NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, id)
      )`);
    for (const sql of tenantPolicySql(s, 'budgets')) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".budgets TO ${BILLING_ROLE}`);
    for (const sql of projectionShadowSql(s, BILLING_ROLE, BUDGET_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".budgets`);
    await q.query(`DROP TABLE "${BILLING_SCHEMA}".budgets`);
  }
}
