import { MigrationInterface, QueryRunner } from 'typeorm';
import { tenantPolicySql } from '@keel/database';
import { projectionShadowSql } from '@keel/projections';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

/** Auth's team tree, as the teams projection follows it: a team budget covers its sub-teams. */
export const TEAM_TABLES = [{ name: 'teams', tenantColumn: 'tenant_id' }];

export class Teams1700000000007 implements MigrationInterface {
  name = 'Teams1700000000007';

  async up(q: QueryRunner): Promise<void> {
    const s = BILLING_SCHEMA;
    await q.query(`
      CREATE TABLE "${s}".teams (
        tenant_id uuid NOT NULL,
        id text NOT NULL,
        name text NOT NULL,
        parent_id text,
        PRIMARY KEY (tenant_id, id)
      )`);
    await q.query(`CREATE INDEX teams_children ON "${s}".teams (tenant_id, parent_id)`);
    for (const sql of tenantPolicySql(s, 'teams')) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${s}".teams TO ${BILLING_ROLE}`);
    for (const sql of projectionShadowSql(s, BILLING_ROLE, TEAM_TABLES)) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE IF EXISTS "${BILLING_SCHEMA}_rebuild".teams`);
    await q.query(`DROP TABLE "${BILLING_SCHEMA}".teams`);
  }
}
