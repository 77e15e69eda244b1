import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_SCHEMA } from '../schema';

/**
 * The user an entry's body names (`data.userId`: a session started, a role granted), as a column
 * derived at append like the others, so that a person's export finds their entries by index (with
 * `actor_id` and `(aggregate_type, aggregate_id)`) instead of reading every envelope. Entries
 * appended before it have none (Keel has no production ledger to convert).
 */
export class LedgerUserColumn1700000000007 implements MigrationInterface {
  name = 'LedgerUserColumn1700000000007';

  async up(q: QueryRunner): Promise<void> {
    const t = `"${AUDIT_SCHEMA}".ledger`;
    await q.query(`ALTER TABLE ${t} ADD COLUMN IF NOT EXISTS user_id text`);
    await q.query(`CREATE INDEX IF NOT EXISTS ledger_user_seq ON ${t} (user_id, seq) WHERE user_id IS NOT NULL`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP INDEX "${AUDIT_SCHEMA}".ledger_user_seq`);
    await q.query(`ALTER TABLE "${AUDIT_SCHEMA}".ledger DROP COLUMN user_id`);
  }
}
