import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_SCHEMA } from '../schema';

/**
 * The ledger holds whatever reached the stream. `envelope` becomes `json` (kept verbatim: `jsonb`
 * cannot hold `\u0000` or a lone surrogate, which stopped the writer); a message that is not JSON is
 * kept as bytes in `payload`; one that is not a valid envelope is flagged with its `problem` (an
 * incident), and its indexed columns are whatever it had. Entries already there keep their hashes:
 * the chain has always hashed the canonical JSON, not the column's representation.
 */
export class LedgerHoldsAnyEvent1700000000005 implements MigrationInterface {
  name = 'LedgerHoldsAnyEvent1700000000005';

  async up(q: QueryRunner): Promise<void> {
    const t = `"${AUDIT_SCHEMA}".ledger`;
    await q.query(`ALTER TABLE ${t} ALTER COLUMN envelope TYPE json USING envelope::json`);
    for (const column of ['envelope', 'event_id', 'tenant_id', 'type', 'context', 'aggregate_type', 'aggregate_id', 'aggregate_version', 'actor_kind', 'actor_id', 'occurred_at']) {
      await q.query(`ALTER TABLE ${t} ALTER COLUMN ${column} DROP NOT NULL`);
    }
    await q.query(`ALTER TABLE ${t} ADD COLUMN payload bytea, ADD COLUMN problem text`);
    await q.query(`ALTER TABLE ${t} ADD CONSTRAINT ledger_holds_something CHECK (envelope IS NOT NULL OR payload IS NOT NULL)`);
    await q.query(`CREATE INDEX ledger_incidents ON ${t} (seq) WHERE problem IS NOT NULL`);
  }

  async down(): Promise<void> {
    throw new Error('the ledger is never narrowed by a migration');
  }
}
