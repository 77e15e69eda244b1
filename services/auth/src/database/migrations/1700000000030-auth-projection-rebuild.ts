import { MigrationInterface, QueryRunner } from 'typeorm';
import { projectionBookkeepingUpgradeSql, projectionShadowSql } from '@keel/projections';
import { AUTH_ROLE, AUTH_SCHEMA } from '../schema';

/** Durable dead-letter resolution, rebuild coordination, and the shadow table a rebuild fills beside the live one. */
export class AuthProjectionRebuild1700000000030 implements MigrationInterface {
  name = 'AuthProjectionRebuild1700000000030';

  async up(q: QueryRunner): Promise<void> {
    for (const sql of projectionBookkeepingUpgradeSql(AUTH_SCHEMA)) await q.query(sql);
    for (const sql of projectionShadowSql(AUTH_SCHEMA, AUTH_ROLE, [{ name: 'users', tenantColumn: 'tenant_id' }])) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP SCHEMA IF EXISTS "${AUTH_SCHEMA}_rebuild" CASCADE`);
  }
}
