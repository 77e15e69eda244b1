import { MigrationInterface, QueryRunner } from 'typeorm';
import { BILLING_ROLE, BILLING_SCHEMA } from '../schema';

/**
 * A generation per scope (a tenant, the platform's price list, everything): moved by a projection
 * in the transaction that changes that scope's budgets, quotas, teams or prices, so the processes'
 * cached copies (CatalogueCache) are known stale exactly when the change is visible. Bookkeeping,
 * not a read model: a rebuild moves every generation instead of copying the table.
 */
export class CacheGenerations1700000000008 implements MigrationInterface {
  name = 'CacheGenerations1700000000008';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`CREATE TABLE "${BILLING_SCHEMA}".cache_generations (scope text PRIMARY KEY, gen bigint NOT NULL)`);
    await q.query(`GRANT SELECT, INSERT, UPDATE ON "${BILLING_SCHEMA}".cache_generations TO ${BILLING_ROLE}`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE "${BILLING_SCHEMA}".cache_generations`);
  }
}
