import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_SCHEMA } from '../schema';

/**
 * How an entry's hash was made. Entries appended from now on hash the message's bytes exactly as
 * published (`published`): what the ledger holds is what it hashes, with no canonicaliser in between
 * that could fail on a message or cost a third of the append. Entries already there keep the
 * canonical-JSON hash they were chained with (`canonical`), and verify as such.
 */
export class LedgerHashesPublishedBytes1700000000006 implements MigrationInterface {
  name = 'LedgerHashesPublishedBytes1700000000006';

  async up(q: QueryRunner): Promise<void> {
    const t = `"${AUDIT_SCHEMA}".ledger`;
    await q.query(`ALTER TABLE ${t} ADD COLUMN hashed text NOT NULL DEFAULT 'canonical' CHECK (hashed IN ('canonical', 'published'))`);
    await q.query(`ALTER TABLE ${t} ALTER COLUMN hashed SET DEFAULT 'published'`);
  }

  async down(): Promise<void> {
    throw new Error('the ledger is never narrowed by a migration');
  }
}
