import { MigrationInterface, QueryRunner } from 'typeorm';
import { BILLING_SCHEMA } from '../schema';

/** When a tenant was closed (its last invoiced month), and its plan's requests a minute (what a throttle threshold takes a share of), in the accounts and their rebuild copy. */
export class AccountClosed1700000000009 implements MigrationInterface {
  name = 'AccountClosed1700000000009';

  async up(q: QueryRunner): Promise<void> {
    for (const schema of [BILLING_SCHEMA, `${BILLING_SCHEMA}_rebuild`]) {
      await q.query(`ALTER TABLE "${schema}".billing_accounts ADD COLUMN IF NOT EXISTS closed_at timestamptz`);
      await q.query(`ALTER TABLE "${schema}".billing_accounts ADD COLUMN IF NOT EXISTS requests_per_minute integer`);
    }
  }

  async down(q: QueryRunner): Promise<void> {
    for (const schema of [BILLING_SCHEMA, `${BILLING_SCHEMA}_rebuild`]) {
      await q.query(`ALTER TABLE "${schema}".billing_accounts DROP COLUMN IF EXISTS closed_at, DROP COLUMN IF EXISTS requests_per_minute`);
    }
  }
}
