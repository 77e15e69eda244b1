import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql, projectionTablesSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

/** The dimensions a rollup is keyed by ('' where a record names none: a key column cannot be null). */
const DIMENSIONS = ['model', 'user_id', 'team_id', 'project_id', 'cost_center', 'environment', 'api_key_id'];
const MEASURES = ['input_tokens', 'cached_input_tokens', 'output_tokens', 'requests', 'gpu_seconds', 'cost'];

/** The tables of the usage projection (every one rebuilt from the ledger), row-level security on each. */
export const BILLING_TABLES = [
  { name: 'prices', tenantColumn: 'scope' },
  { name: 'model_aliases', tenantColumn: 'scope' },
  { name: 'usage_facts', tenantColumn: 'tenant_id' },
  { name: 'usage_records', tenantColumn: 'tenant_id' },
  { name: 'pending_corrections', tenantColumn: 'tenant_id' },
  { name: 'usage_rollups', tenantColumn: 'tenant_id' },
];

export class CreateBilling1700000000001 implements MigrationInterface {
  name = 'CreateBilling1700000000001';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    for (const sql of projectionTablesSql(s)) await q.query(sql);
    // A model's price, one row per version; scope is 'platform' or the tenant whose negotiated rate it is.
    await q.query(`
      CREATE TABLE "${s}".prices (
        scope text NOT NULL,
        model text NOT NULL,
        version integer NOT NULL,
        aliases text[] NOT NULL,
        currency text NOT NULL,
        rates jsonb NOT NULL,
        effective_from timestamptz NOT NULL,
        effective_to timestamptz,
        published_at timestamptz NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (scope, model, version)
      )`);
    await q.query(`
      CREATE TABLE "${s}".model_aliases (
        scope text NOT NULL,
        alias text NOT NULL,
        model text NOT NULL,
        PRIMARY KEY (scope, alias)
      )`);
    // Every fact counted, once: (tenant, source, id) is the identity of a record or a correction.
    await q.query(`
      CREATE TABLE "${s}".usage_facts (
        tenant_id uuid NOT NULL,
        source text NOT NULL,
        fact_id text NOT NULL,
        kind text NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (tenant_id, source, fact_id)
      )`);
    // Each record as counted now (after its corrections), with the price version that rated it.
    await q.query(`
      CREATE TABLE "${s}".usage_records (
        tenant_id uuid NOT NULL,
        source text NOT NULL,
        record_id text NOT NULL,
        status text NOT NULL CHECK (status IN ('active', 'cancelled')),
        occurred_at timestamptz NOT NULL,
        ${DIMENSIONS.map((d) => `${d} text NOT NULL`).join(',\n        ')},
        gpu_type text,
        ${MEASURES.map((m) => `${m} numeric NOT NULL`).join(',\n        ')},
        price_scope text,
        price_model text,
        price_version integer,
        corrections integer NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (tenant_id, source, record_id)
      )`);
    await q.query(`CREATE INDEX usage_records_time ON "${s}".usage_records (tenant_id, occurred_at)`);
    // Corrections that arrived before the record they correct: applied when it comes.
    await q.query(`
      CREATE TABLE "${s}".pending_corrections (
        tenant_id uuid NOT NULL,
        source text NOT NULL,
        fact_id text NOT NULL,
        target text NOT NULL,
        position bigint NOT NULL,
        fact jsonb NOT NULL,
        PRIMARY KEY (tenant_id, source, fact_id)
      )`);
    await q.query(`CREATE INDEX pending_corrections_target ON "${s}".pending_corrections (tenant_id, source, target)`);
    // Sums per UTC minute, hour and day and per attribution: reports add whole days, the hours and minutes at the edges.
    await q.query(`
      CREATE TABLE "${s}".usage_rollups (
        tenant_id uuid NOT NULL,
        grain text NOT NULL CHECK (grain IN ('minute', 'hour', 'day')),
        bucket timestamptz NOT NULL,
        ${DIMENSIONS.map((d) => `${d} text NOT NULL`).join(',\n        ')},
        ${MEASURES.map((m) => `${m} numeric NOT NULL`).join(',\n        ')},
        records integer NOT NULL,
        unpriced integer NOT NULL,
        PRIMARY KEY (tenant_id, grain, bucket, ${DIMENSIONS.join(', ')})
      )`);
    for (const t of BILLING_TABLES) for (const sql of tenantPolicySql(s, t.name, t.tenantColumn)) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "${s}" TO ${BILLING_ROLE}`);
    await q.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA "${s}" TO ${BILLING_ROLE}`);
    for (const sql of projectionShadowSql(s, BILLING_ROLE, BILLING_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP SCHEMA IF EXISTS "${BILLING_SCHEMA}_rebuild" CASCADE`);
    await q.query(`DROP TABLE ${BILLING_TABLES.map((t) => `"${BILLING_SCHEMA}".${t.name}`).join(', ')}`);
  }
}
