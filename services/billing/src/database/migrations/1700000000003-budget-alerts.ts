import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

export const ALERT_TABLES = [
  { name: 'budget_periods', tenantColumn: 'tenant_id' },
  { name: 'budget_alerts', tenantColumn: 'tenant_id' },
];

/**
 * What each budget's periods have spent (every usage record counted, settled or reported) and the
 * thresholds crossed in each, once: the key is the budget, the period and the threshold. An alert
 * is `published` once its event is on the log (the projection sees it there), so a crash between
 * the commit and the publish loses none, and a rebuild republishes none.
 */
export class BudgetAlerts1700000000003 implements MigrationInterface {
  name = 'BudgetAlerts1700000000003';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".budget_periods (
        tenant_id uuid NOT NULL,
        budget_id uuid NOT NULL,
        period_start timestamptz NOT NULL,
        period_end timestamptz NOT NULL,
        spent numeric NOT NULL,
        PRIMARY KEY (tenant_id, budget_id, period_start)
      )`);
    await q.query(`
      CREATE TABLE "${s}".budget_alerts (
        tenant_id uuid NOT NULL,
        budget_id uuid NOT NULL,
        period_start timestamptz NOT NULL,
        percent numeric NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        event jsonb NOT NULL,
        published boolean NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (tenant_id, budget_id, period_start, percent)
      )`);
    await q.query(`CREATE INDEX budget_alerts_unpublished ON "${s}".budget_alerts (position) WHERE NOT published`);
    for (const t of ALERT_TABLES) for (const sql of tenantPolicySql(s, t.name)) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".budget_periods, "${s}".budget_alerts TO ${BILLING_ROLE}`);
    for (const sql of projectionShadowSql(s, BILLING_ROLE, ALERT_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".budget_periods, "${BILLING_SCHEMA}_rebuild".budget_alerts`);
    await q.query(`DROP TABLE "${BILLING_SCHEMA}".budget_periods, "${BILLING_SCHEMA}".budget_alerts`);
  }
}
