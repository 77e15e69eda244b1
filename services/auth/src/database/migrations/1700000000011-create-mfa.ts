import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

export class CreateMfa1700000000011 implements MigrationInterface {
  name = 'CreateMfa1700000000011';

  async up(q: QueryRunner): Promise<void> {
    const s = AUTH_SCHEMA;
    // One TOTP factor per user. The secret is sealed under the key-encryption key with the user
    // id as associated data; last_used_step refuses a code (or an older one) used before.
    await q.query(`CREATE TABLE "${s}".mfa_factors (
      user_id uuid PRIMARY KEY, tenant_id text NOT NULL, secret_enc bytea NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(), confirmed_at timestamptz, last_used_step bigint)`);
    await q.query(`CREATE INDEX mfa_factors_tenant ON "${s}".mfa_factors (tenant_id, user_id)`);
    // Recovery codes are high-entropy and single-use: stored as SHA-256, marked when used.
    await q.query(`CREATE TABLE "${s}".recovery_codes (
      user_id uuid NOT NULL, tenant_id text NOT NULL, code_hash char(64) NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(), used_at timestamptz, PRIMARY KEY (user_id, code_hash))`);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".mfa_factors, "${s}".recovery_codes TO ${AUTH_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${AUTH_SCHEMA}".recovery_codes`);
    await q.query(`DROP TABLE "${AUTH_SCHEMA}".mfa_factors`);
  }
}
