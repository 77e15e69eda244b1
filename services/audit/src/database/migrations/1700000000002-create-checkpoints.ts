import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_ROLE, AUDIT_SCHEMA } from '../schema';

export class CreateCheckpoints1700000000002 implements MigrationInterface {
  name = 'CreateCheckpoints1700000000002';

  async up(q: QueryRunner): Promise<void> {
    const s = AUDIT_SCHEMA;
    // Ed25519 signing keys; the private half encrypted under the key-encryption key.
    await q.query(`
      CREATE TABLE "${s}".signing_keys (
        key_id text PRIMARY KEY,
        public_key_jwk jsonb NOT NULL,
        private_key_enc bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    // What the ledger held at a sequence, signed: proof even against a rewrite of the whole chain.
    await q.query(`
      CREATE TABLE "${s}".checkpoints (
        seq bigint PRIMARY KEY,
        hash char(64) NOT NULL,
        signed_at timestamptz NOT NULL,
        key_id text NOT NULL REFERENCES "${s}".signing_keys (key_id),
        signature text NOT NULL
      )`);
    for (const table of ['signing_keys', 'checkpoints']) {
      await q.query(`CREATE TRIGGER ${table}_append_only BEFORE UPDATE OR DELETE ON "${s}".${table}
        FOR EACH ROW EXECUTE FUNCTION "${s}".reject_ledger_change()`);
      await q.query(`CREATE TRIGGER ${table}_no_truncate BEFORE TRUNCATE ON "${s}".${table}
        FOR EACH STATEMENT EXECUTE FUNCTION "${s}".reject_ledger_change()`);
      await q.query(`GRANT SELECT, INSERT ON "${s}".${table} TO ${AUDIT_ROLE}`);
    }
  }

  async down(): Promise<void> {
    throw new Error('checkpoints are never dropped by a migration');
  }
}
