import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

export class CreateRbac1700000000013 implements MigrationInterface {
  name = 'CreateRbac1700000000013';

  async up(q: QueryRunner): Promise<void> {
    const s = AUTH_SCHEMA;
    await q.query(`CREATE TABLE "${s}".roles (
      tenant_id text NOT NULL, name text NOT NULL, description text NOT NULL DEFAULT '',
      permissions text[] NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (tenant_id, name))`);
    await q.query(`CREATE TABLE "${s}".teams (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL,
      parent_id uuid REFERENCES "${s}".teams (id), created_at timestamptz NOT NULL DEFAULT now())`);
    await q.query(`CREATE INDEX teams_tenant ON "${s}".teams (tenant_id)`);
    await q.query(`CREATE TABLE "${s}".role_assignments (
      id uuid PRIMARY KEY, tenant_id text NOT NULL, user_id uuid NOT NULL, role text NOT NULL,
      team_id uuid REFERENCES "${s}".teams (id), created_at timestamptz NOT NULL DEFAULT now())`);
    await q.query(`CREATE UNIQUE INDEX role_assignments_unique ON "${s}".role_assignments
      (tenant_id, user_id, role, coalesce(team_id, '00000000-0000-0000-0000-000000000000'))`);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON "${s}".roles, "${s}".teams, "${s}".role_assignments TO ${AUTH_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${AUTH_SCHEMA}".role_assignments, "${AUTH_SCHEMA}".teams, "${AUTH_SCHEMA}".roles`);
  }
}
