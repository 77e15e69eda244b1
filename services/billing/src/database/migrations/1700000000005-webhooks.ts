import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

export const WEBHOOK_TABLES = [
  { name: 'webhook_subscriptions', tenantColumn: 'tenant_id' },
  { name: 'webhook_deliveries', tenantColumn: 'tenant_id' },
];

/**
 * Webhook subscriptions and their deliveries, as the webhooks projection keeps them from the log: a
 * delivery row is made (once: its key is the subscription and the event) when a matching event is
 * applied, in the transaction that moves the checkpoint, so it is the outbox of the deliveries;
 * each attempt's outcome is an event too, so a rebuild knows what was delivered and sends it again
 * to nobody. The rows name the event by position: its body is read from the log when it is sent.
 */
export class Webhooks1700000000005 implements MigrationInterface {
  name = 'Webhooks1700000000005';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".webhook_subscriptions (
        tenant_id uuid NOT NULL,
        id uuid NOT NULL,
        url text NOT NULL,
        event_types jsonb NOT NULL,
        description text NOT NULL,
        include_personal boolean NOT NULL,
        status text NOT NULL,
        disabled_reason text,
        consecutive_failures integer NOT NULL DEFAULT 0,
        secret_version integer NOT NULL DEFAULT 1,
        previous_secret_until timestamptz,
        version integer NOT NULL,
        position bigint NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, id)
      )`);
    await q.query(`
      CREATE TABLE "${s}".webhook_deliveries (
        tenant_id uuid NOT NULL,
        webhook_id uuid NOT NULL,
        event_id uuid NOT NULL,
        id text NOT NULL,
        event_type text NOT NULL,
        event_position bigint NOT NULL,
        status text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        -- The attempts made before the last redelivery asked for (a redelivery gets every attempt again).
        attempts_before integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz,
        last_attempt_at timestamptz,
        last_status integer,
        last_error text,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, webhook_id, event_id)
      )`);
    await q.query(`CREATE INDEX webhook_deliveries_due ON "${s}".webhook_deliveries (next_attempt_at) WHERE status = 'pending'`);
    await q.query(`CREATE INDEX webhook_deliveries_listed ON "${s}".webhook_deliveries (tenant_id, webhook_id, event_position DESC)`);
    await q.query(`CREATE UNIQUE INDEX webhook_deliveries_id ON "${s}".webhook_deliveries (tenant_id, webhook_id, id)`);
    for (const t of WEBHOOK_TABLES) {
      for (const sql of tenantPolicySql(s, t.name)) await q.query(sql);
      await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".${t.name} TO ${BILLING_ROLE}`);
    }
    for (const sql of projectionShadowSql(s, BILLING_ROLE, WEBHOOK_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const t of WEBHOOK_TABLES) {
      await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".${t.name}`);
      await q.query(`DROP TABLE "${BILLING_SCHEMA}".${t.name}`);
    }
  }
}
