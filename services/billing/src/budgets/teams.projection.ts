import { EntityManager } from 'typeorm';
import { authEventTypes as A, PositionedEvent, isUuid } from '@keel/contracts';
import { Projection } from '@keel/projections';
import { CatalogueCache } from '../catalogue-cache';
import { TEAM_TABLES } from '../database/migrations/1700000000007-teams';

/** The runner token of the teams projection. */
export const TEAMS_RUNNER = Symbol('BILLING_TEAMS_RUNNER');

/** Each tenant's team tree from auth's team events (made, renamed or moved, deleted). */
export class TeamsProjection implements Projection {
  readonly name = 'teams';
  readonly contexts = ['auth'];
  readonly aggregateType = 'team';
  readonly tables = TEAM_TABLES.map((t) => t.name);

  constructor(private readonly cache?: CatalogueCache) {}

  async afterRebuild(): Promise<void> {
    await this.cache?.bumpAll();
  }

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<Set<string>> {
    const tenants = new Set<string>();
    for (const { event } of events) {
      const tenantId = event.tenantId.toLowerCase();
      if (!isUuid(tenantId)) continue;
      tenants.add(tenantId);
      const id = event.aggregateId.toLowerCase();
      const d = event.data as { name?: unknown; parentId?: unknown };
      const parent = typeof d.parentId === 'string' ? d.parentId.toLowerCase() : null;
      const name = typeof d.name === 'string' ? d.name : '';
      if (event.type === A.teamCreated || event.type === A.teamUpdated) {
        await m.query(
          `INSERT INTO teams (tenant_id, id, name, parent_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, id) DO UPDATE SET name = EXCLUDED.name, parent_id = EXCLUDED.parent_id`,
          [tenantId, id, name, parent],
        );
      } else if (event.type === A.teamDeleted) {
        await m.query(`DELETE FROM teams WHERE tenant_id = $1 AND id = $2`, [tenantId, id]);
      }
    }
    // The tenants whose quota or tree changed: their cached budgets are read again once this commits.
    await CatalogueCache.bump(m, tenants);
    return tenants;
  }
}
