import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUTH_SCHEMA } from '../schema';

/**
 * A session remembers when its person last proved who they are (`auth_time`: the sign-in, or a
 * re-authentication) and how (`amr`, RFC 8176), so that a refresh keeps both in the new access
 * token and step-up routes can ask for a recent authentication. Sessions started before this
 * were signed in when they were created; how is not known (no `amr`).
 */
export class SessionAuthTime1700000000040 implements MigrationInterface {
  name = 'SessionAuthTime1700000000040';

  async up(q: QueryRunner): Promise<void> {
    const s = `"${AUTH_SCHEMA}".sessions`;
    await q.query(`ALTER TABLE ${s} ADD COLUMN IF NOT EXISTS auth_time timestamptz`);
    await q.query(`UPDATE ${s} SET auth_time = created_at WHERE auth_time IS NULL`);
    await q.query(`ALTER TABLE ${s} ALTER COLUMN auth_time SET DEFAULT now(), ALTER COLUMN auth_time SET NOT NULL`);
    await q.query(`ALTER TABLE ${s} ADD COLUMN IF NOT EXISTS amr text[] NOT NULL DEFAULT '{}'`);
  }

  async down(q: QueryRunner): Promise<void> {
    const s = `"${AUTH_SCHEMA}".sessions`;
    await q.query(`ALTER TABLE ${s} DROP COLUMN amr, DROP COLUMN auth_time`);
  }
}
