import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

/** The plans' prices (the usage projection keeps them beside the model prices). */
export const PLAN_PRICE_TABLES = [{ name: 'plan_prices' }];
/** Each tenant's plan, time zone and creation (the plans projection, from the tenant events). */
export const ACCOUNT_TABLES = [{ name: 'billing_accounts', tenantColumn: 'tenant_id' }];
/** When each user of a tenant was active (the seats projection, from auth's user events). */
export const SEAT_TABLES = [{ name: 'seat_intervals', tenantColumn: 'tenant_id' }];
/** Invoices (the invoices projection, from each tenant's invoice book). */
export const INVOICE_TABLES = [{ name: 'invoices', tenantColumn: 'tenant_id' }];

export class Invoices1700000000006 implements MigrationInterface {
  name = 'Invoices1700000000006';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".plan_prices (
        scope text NOT NULL,
        plan text NOT NULL,
        version integer NOT NULL,
        currency text NOT NULL,
        seat numeric NOT NULL,
        fixed_fee numeric NOT NULL,
        included_usage numeric NOT NULL,
        usage_cap numeric,
        minimum numeric,
        effective_from timestamptz NOT NULL,
        published_at timestamptz NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (scope, plan, version)
      )`);
    await q.query(`
      CREATE TABLE "${s}".billing_accounts (
        tenant_id uuid PRIMARY KEY,
        slug text NOT NULL,
        plan text NOT NULL,
        max_users integer NOT NULL,
        time_zone text NOT NULL,
        created_at timestamptz NOT NULL,
        position bigint NOT NULL
      )`);
    await q.query(`
      CREATE TABLE "${s}".seat_intervals (
        tenant_id uuid NOT NULL,
        user_id uuid NOT NULL,
        active_from timestamptz NOT NULL,
        active_to timestamptz,
        PRIMARY KEY (tenant_id, user_id, active_from)
      )`);
    await q.query(`CREATE INDEX seat_intervals_open ON "${s}".seat_intervals (tenant_id, user_id) WHERE active_to IS NULL`);
    await q.query(`
      CREATE TABLE "${s}".invoices (
        tenant_id uuid NOT NULL,
        id uuid NOT NULL,
        period text NOT NULL,
        period_start timestamptz NOT NULL,
        period_end timestamptz NOT NULL,
        time_zone text NOT NULL,
        status text NOT NULL,
        number text,
        currency text,
        plan text,
        plan_price jsonb,
        lines jsonb,
        total text,
        finalizes_at timestamptz NOT NULL,
        finalized_at timestamptz,
        voided_at timestamptz,
        void_reason text,
        credit_note jsonb,
        created_at timestamptz NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (tenant_id, id)
      )`);
    // At most one invoice of a period that is not void (the book's decision enforces it; this states it).
    await q.query(`CREATE UNIQUE INDEX invoices_one_per_period ON "${s}".invoices (tenant_id, period) WHERE status <> 'void'`);
    await q.query(`CREATE UNIQUE INDEX invoices_numbers ON "${s}".invoices (tenant_id, number) WHERE number IS NOT NULL`);
    for (const t of [...PLAN_PRICE_TABLES, ...ACCOUNT_TABLES, ...SEAT_TABLES, ...INVOICE_TABLES]) {
      if ('tenantColumn' in t) for (const sql of tenantPolicySql(s, t.name)) await q.query(sql);
      await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".${t.name} TO ${BILLING_ROLE}`);
    }
    for (const sql of projectionShadowSql(s, BILLING_ROLE, [...PLAN_PRICE_TABLES, ...ACCOUNT_TABLES, ...SEAT_TABLES, ...INVOICE_TABLES])) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const t of ['plan_prices', 'billing_accounts', 'seat_intervals', 'invoices']) {
      await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".${t}`);
      await q.query(`DROP TABLE "${BILLING_SCHEMA}".${t}`);
    }
  }
}
