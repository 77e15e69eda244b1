import { MigrationInterface, QueryRunner } from 'typeorm';
import { projectionTablesSql } from '@keel/projections';
import { TENANT_ROLE, TENANT_SCHEMA } from '../schema';

export class CreateTenants1700000000001 implements MigrationInterface {
  name = 'CreateTenants1700000000001';

  async up(q: QueryRunner): Promise<void> {
    const s = TENANT_SCHEMA;
    for (const sql of projectionTablesSql(s)) await q.query(sql);
    await q.query(`
      CREATE TABLE "${s}".tenants (
        id uuid PRIMARY KEY,
        slug text NOT NULL UNIQUE,
        name text NOT NULL,
        plan text NOT NULL,
        quotas jsonb NOT NULL,
        settings jsonb NOT NULL,
        status text NOT NULL,
        suspended_reason text,
        version integer NOT NULL,
        position bigint NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
      )`);
    await q.query(`CREATE INDEX tenants_status_id ON "${s}".tenants (status, id)`);
    // Uniqueness across aggregates: a slug is reserved here before the creating event is
    // appended, and released if the append fails.
    await q.query(`
      CREATE TABLE "${s}".slug_reservations (
        slug text PRIMARY KEY,
        tenant_id uuid NOT NULL,
        reserved_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "${s}" TO ${TENANT_ROLE}`);
    await q.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA "${s}" TO ${TENANT_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${TENANT_SCHEMA}".slug_reservations, "${TENANT_SCHEMA}".tenants`);
  }
}
