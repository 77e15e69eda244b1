import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

export class CreateSso1700000000012 implements MigrationInterface {
  name = 'CreateSso1700000000012';

  async up(q: QueryRunner): Promise<void> {
    const s = AUTH_SCHEMA;
    // A tenant's identity providers. `config` is the type's own settings (OIDC: issuer, client id,
    // scopes); the client secret is sealed under the key-encryption key with the provider id as
    // associated data. Pending sign-ins are not here: they live briefly in Redis.
    await q.query(`CREATE TABLE "${s}".identity_providers (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, type text NOT NULL, name text NOT NULL,
      config jsonb NOT NULL, mapping jsonb NOT NULL, redirect_uris text[] NOT NULL,
      client_secret_enc bytea NOT NULL, version integer NOT NULL DEFAULT 1,
      created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`);
    await q.query(`CREATE INDEX identity_providers_tenant ON "${s}".identity_providers (tenant_id, created_at)`);
    // Who a provider's subject is in Keel: one user per (provider, subject).
    await q.query(`CREATE TABLE "${s}".external_identities (
      id uuid PRIMARY KEY, provider_id uuid NOT NULL REFERENCES "${s}".identity_providers (id) ON DELETE CASCADE,
      subject text NOT NULL, tenant_id text NOT NULL, user_id uuid NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(), last_sign_in_at timestamptz NOT NULL DEFAULT now(),
      UNIQUE (provider_id, subject))`);
    await q.query(`CREATE INDEX external_identities_user ON "${s}".external_identities (user_id)`);
    // The team-scope role assignments a link's groups made, so that sign-in revokes them when the
    // groups go, and never touches grants made by hand.
    await q.query(`CREATE TABLE "${s}".external_identity_grants (
      link_id uuid NOT NULL REFERENCES "${s}".external_identities (id) ON DELETE CASCADE,
      assignment_id uuid NOT NULL, tenant_id text NOT NULL, PRIMARY KEY (link_id, assignment_id))`);
    for (const table of ['identity_providers', 'external_identities', 'external_identity_grants']) {
      for (const sql of tenantPolicySql(s, table)) await q.query(sql);
    }
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON "${s}".identity_providers, "${s}".external_identities, "${s}".external_identity_grants TO ${AUTH_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${AUTH_SCHEMA}".external_identity_grants, "${AUTH_SCHEMA}".external_identities, "${AUTH_SCHEMA}".identity_providers`);
  }
}
