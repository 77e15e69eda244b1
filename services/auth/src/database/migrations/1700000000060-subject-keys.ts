import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

/**
 * The data keys of data subjects (crypto-shredding, issue 7): one AES-256 key per person, sealed
 * under the KEK and bound to its subject. Erasure destroys the key (`dek_sealed` NULL) and keeps
 * the row as a tombstone, so no key is ever made for that subject again. Keyed by tenant and
 * subject explicitly and read only by the key store (services/auth/src/personal-data), across
 * tenants (a platform administrator's key seals what they do in any tenant): no row-level policy.
 */
export class SubjectKeys1700000000060 implements MigrationInterface {
  name = 'SubjectKeys1700000000060';

  async up(q: QueryRunner): Promise<void> {
    const s = AUTH_SCHEMA;
    await q.query(`CREATE TABLE "${s}".subject_keys (
      tenant_id text NOT NULL, subject_id text NOT NULL, dek_sealed bytea,
      created_at timestamptz NOT NULL DEFAULT now(), erased_at timestamptz,
      PRIMARY KEY (tenant_id, subject_id),
      CONSTRAINT subject_key_or_erased CHECK ((dek_sealed IS NULL) = (erased_at IS NOT NULL)))`);
    await q.query(`GRANT SELECT, INSERT, UPDATE ON "${s}".subject_keys TO ${AUTH_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${AUTH_SCHEMA}".subject_keys`);
  }
}
