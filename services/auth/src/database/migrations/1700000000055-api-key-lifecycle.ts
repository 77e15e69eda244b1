import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUTH_SCHEMA } from '../schema';

/**
 * API keys follow their creator and have a lifecycle: who made the key (`created_by_kind`, and the
 * tenant of that principal: a platform administrator may make a key in any tenant), when it was
 * last used (at most one write a minute per key), and rotation (the previous secret's hash, valid
 * until the grace period ends). Keys made before this were made by the user `created_by` names
 * when it is a user id (in the tenant of that user's email reservation), else by the operator.
 */
export class ApiKeyLifecycle1700000000055 implements MigrationInterface {
  name = 'ApiKeyLifecycle1700000000055';

  async up(q: QueryRunner): Promise<void> {
    const k = `"${AUTH_SCHEMA}".api_keys`;
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS created_by_kind text`);
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS created_by_tenant text`);
    await q.query(
      // The creator's own tenant from its email reservation: a platform administrator's key made
      // in tenant X has its creator in \`platform\`, not X (else the key would lose its creator).
      `UPDATE ${k} k SET created_by_kind = CASE WHEN created_by ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN 'user' ELSE 'system' END,
                       created_by_tenant = coalesce((SELECT r.tenant_id FROM "${AUTH_SCHEMA}".email_reservations r WHERE r.user_id::text = k.created_by), k.tenant_id)
       WHERE created_by_kind IS NULL`,
    );
    await q.query(`ALTER TABLE ${k} ALTER COLUMN created_by_kind SET NOT NULL, ALTER COLUMN created_by_tenant SET NOT NULL`);
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS last_used_at timestamptz`);
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS rotated_at timestamptz`);
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS previous_secret_hash char(64)`);
    await q.query(`ALTER TABLE ${k} ADD COLUMN IF NOT EXISTS previous_secret_valid_until timestamptz`);
    // The keys of a creator, for the creator's changes.
    await q.query(`CREATE INDEX IF NOT EXISTS api_keys_creator ON ${k} (created_by) WHERE revoked_at IS NULL`);
  }

  async down(q: QueryRunner): Promise<void> {
    const k = `"${AUTH_SCHEMA}".api_keys`;
    await q.query(`DROP INDEX IF EXISTS "${AUTH_SCHEMA}".api_keys_creator`);
    await q.query(
      `ALTER TABLE ${k} DROP COLUMN previous_secret_valid_until, DROP COLUMN previous_secret_hash, DROP COLUMN rotated_at, DROP COLUMN last_used_at, DROP COLUMN created_by_tenant, DROP COLUMN created_by_kind`,
    );
  }
}
