import { MigrationInterface, QueryRunner } from 'typeorm';
import { projectionTablesSql } from '@keel/projections';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

export class CreateAuth1700000000010 implements MigrationInterface {
  name = 'CreateAuth1700000000010';

  async up(q: QueryRunner): Promise<void> {
    const s = AUTH_SCHEMA;
    for (const sql of projectionTablesSql(s)) await q.query(sql);
    // An email is unique within a tenant: reserved here before the user's first event.
    await q.query(`CREATE TABLE "${s}".email_reservations (
      tenant_id text NOT NULL, email text NOT NULL, user_id uuid NOT NULL UNIQUE,
      reserved_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, email))`);
    // Secrets never go into events: the Argon2id hash lives here only.
    await q.query(`CREATE TABLE "${s}".credentials (
      user_id uuid PRIMARY KEY, tenant_id text NOT NULL, password_hash text NOT NULL,
      updated_at timestamptz NOT NULL DEFAULT now())`);
    await q.query(`CREATE TABLE "${s}".users (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, email text NOT NULL, name text NOT NULL,
      roles text[] NOT NULL, status text NOT NULL, version integer NOT NULL,
      created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)`);
    await q.query(`CREATE INDEX users_tenant ON "${s}".users (tenant_id, id)`);
    await q.query(`CREATE TABLE "${s}".sessions (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, user_id uuid NOT NULL,
      refresh_hash char(64) NOT NULL, generation integer NOT NULL DEFAULT 1,
      created_at timestamptz NOT NULL DEFAULT now(), last_used_at timestamptz NOT NULL DEFAULT now(),
      expires_at timestamptz NOT NULL, revoked_at timestamptz, revoked_reason text)`);
    await q.query(`CREATE INDEX sessions_user_active ON "${s}".sessions (user_id, created_at) WHERE revoked_at IS NULL`);
    await q.query(`CREATE INDEX sessions_tenant ON "${s}".sessions (tenant_id, created_at)`);
    await q.query(`CREATE TABLE "${s}".api_keys (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL, secret_hash char(64) NOT NULL,
      permissions text[] NOT NULL, expires_at timestamptz NOT NULL, created_by text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(), revoked_at timestamptz)`);
    await q.query(`CREATE INDEX api_keys_tenant ON "${s}".api_keys (tenant_id, created_at)`);
    // Token signing keys (Ed25519), the private half sealed under the key-encryption key.
    await q.query(`CREATE TABLE "${s}".signing_keys (
      kid text PRIMARY KEY, public_jwk jsonb NOT NULL, private_key_enc bytea NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz)`);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "${s}" TO ${AUTH_ROLE}`);
    await q.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA "${s}" TO ${AUTH_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP SCHEMA "${AUTH_SCHEMA}" CASCADE`);
  }
}
