import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_ROLE, AUDIT_SCHEMA } from '../schema';

export class CreateLedger1700000000000 implements MigrationInterface {
  name = 'CreateLedger1700000000000';

  async up(q: QueryRunner): Promise<void> {
    const s = AUDIT_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".ledger (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        event_id uuid NOT NULL,
        tenant_id text NOT NULL,
        type text NOT NULL,
        context text NOT NULL,
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        aggregate_version integer NOT NULL,
        actor_kind text NOT NULL,
        actor_id text NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        envelope jsonb NOT NULL,
        prev_hash char(64) NOT NULL,
        hash char(64) NOT NULL
      )`);
    await q.query(`CREATE INDEX ledger_tenant_seq ON "${s}".ledger (tenant_id, seq)`);
    await q.query(`CREATE INDEX ledger_type_seq ON "${s}".ledger (type, seq)`);
    await q.query(`CREATE INDEX ledger_context_seq ON "${s}".ledger (context, seq)`);
    await q.query(`CREATE INDEX ledger_aggregate_seq ON "${s}".ledger (aggregate_type, aggregate_id, seq)`);
    await q.query(`CREATE INDEX ledger_actor_seq ON "${s}".ledger (actor_id, seq)`);
    await q.query(`CREATE INDEX ledger_occurred_at ON "${s}".ledger (occurred_at)`);
    // Append-only for every role, owner and superuser included: only disabling the
    // triggers (which needs ownership of the table) gets around them, and verification
    // finds whatever was changed that way.
    await q.query(`
      CREATE FUNCTION "${s}".reject_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit.ledger is append-only: % is not allowed', TG_OP
          USING ERRCODE = 'insufficient_privilege';
      END $$`);
    await q.query(`CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON "${s}".ledger
      FOR EACH ROW EXECUTE FUNCTION "${s}".reject_ledger_change()`);
    await q.query(`CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON "${s}".ledger
      FOR EACH STATEMENT EXECUTE FUNCTION "${s}".reject_ledger_change()`);
    await q.query(`GRANT SELECT, INSERT ON "${s}".ledger TO ${AUDIT_ROLE}`);
  }

  async down(): Promise<void> {
    throw new Error('the ledger is never dropped by a migration');
  }
}
