import { MigrationInterface, QueryRunner } from 'typeorm';
import { outboxTablesSql } from '@keel/event-sourcing';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

/**
 * The transactional outbox of auth's state-stored aggregates (sessions, API keys, MFA factors,
 * roles, teams, role assignments, identity providers, external identities, signing keys), and
 * the version each aggregate's next event carries.
 *
 * Versions of rows that exist already are set from what the row shows of its past events: exact
 * for sessions, API keys, role assignments and identity providers (which counted already);
 * a lower bound for teams, roles, external identities and MFA factors, whose earlier updates
 * the tables do not record (see services/auth/README.md).
 */
export class AuthOutbox1700000000015 implements MigrationInterface {
  name = 'AuthOutbox1700000000015';

  async up(q: QueryRunner): Promise<void> {
    const s = `"${AUTH_SCHEMA}"`;
    for (const sql of outboxTablesSql(AUTH_SCHEMA, AUTH_ROLE)) await q.query(sql);
    for (const table of ['sessions', 'api_keys', 'teams', 'role_assignments', 'external_identities']) {
      await q.query(`ALTER TABLE ${s}.${table} ADD COLUMN version integer NOT NULL DEFAULT 1`);
    }
    // started (+ revoked); created (+ revoked).
    await q.query(`UPDATE ${s}.sessions SET version = 2 WHERE revoked_at IS NOT NULL`);
    await q.query(`UPDATE ${s}.api_keys SET version = 2 WHERE revoked_at IS NOT NULL`);
    // Roles and MFA factors are deleted and can come back under the same id (a name, a user):
    // their versions live in outbox_versions, which outlives the row.
    await q.query(
      `INSERT INTO ${s}.outbox_versions (tenant_id, aggregate_type, aggregate_id, version)
       SELECT tenant_id, 'role', name, CASE WHEN updated_at > created_at THEN 2 ELSE 1 END FROM ${s}.roles`,
    );
    await q.query(
      `INSERT INTO ${s}.outbox_versions (tenant_id, aggregate_type, aggregate_id, version)
       SELECT f.tenant_id, 'mfa_factor', f.user_id::text,
              1 + (f.confirmed_at IS NOT NULL)::int + (SELECT count(*) FROM ${s}.recovery_codes c WHERE c.user_id = f.user_id AND c.used_at IS NOT NULL)::int
       FROM ${s}.mfa_factors f`,
    );
  }

  async down(q: QueryRunner): Promise<void> {
    const s = `"${AUTH_SCHEMA}"`;
    for (const table of ['sessions', 'api_keys', 'teams', 'role_assignments', 'external_identities']) await q.query(`ALTER TABLE ${s}.${table} DROP COLUMN version`);
    await q.query(`DROP TABLE ${s}.outbox_versions, ${s}.outbox`);
  }
}
