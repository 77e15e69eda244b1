import { MigrationInterface, QueryRunner } from 'typeorm';
import { projectionBookkeepingUpgradeSql, projectionShadowSql } from '@keel/projections';
import { TENANT_ROLE, TENANT_SCHEMA } from '../schema';

/** Durable dead-letter resolution, rebuild coordination, and the shadow table a rebuild fills beside the live one. */
export class TenantProjectionRebuild1700000000005 implements MigrationInterface {
  name = 'TenantProjectionRebuild1700000000005';

  async up(q: QueryRunner): Promise<void> {
    for (const sql of projectionBookkeepingUpgradeSql(TENANT_SCHEMA)) await q.query(sql);
    for (const sql of projectionShadowSql(TENANT_SCHEMA, TENANT_ROLE, [{ name: 'tenants', tenantColumn: 'id' }])) await q.query(sql);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP SCHEMA IF EXISTS "${TENANT_SCHEMA}_rebuild" CASCADE`);
  }
}
