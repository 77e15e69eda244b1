import { EntityManager } from 'typeorm';
import { EventEnvelope, PositionedEvent, Tenant, TenantEvent, tenantEventTypes as T } from '@keel/contracts';
import { PermanentEventError } from '@keel/messaging';
import { Projection } from '@keel/projections';
import { TenantCache } from './tenant-cache';

/** Unqualified: the role's search_path is its schema, and a rebuild points it at the shadow schema. */
const TABLE = 'tenants';

export interface TenantRow {
  id: string;
  slug: string;
  name: string;
  plan: Tenant['plan'];
  quotas: Tenant['quotas'];
  settings: Tenant['settings'];
  status: Tenant['status'];
  suspended_reason: string | null;
  version: number;
  position: string;
  created_at: Date;
  updated_at: Date;
}

export function rowToTenant(r: TenantRow): Tenant {
  return {
    id: r.id,
    slug: r.slug,
    name: r.name,
    plan: r.plan,
    quotas: r.quotas,
    settings: r.settings,
    status: r.status,
    suspendedReason: r.suspended_reason,
    version: r.version,
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}

/** The tenant read model: one row per tenant, kept at the version of its last event. */
export class TenantsProjection implements Projection {
  readonly name = 'tenants';
  readonly contexts = ['tenant'];
  readonly tables = ['tenants'];

  constructor(private readonly cache: TenantCache) {}

  /** Applies events in order; runs of creations become one multi-row INSERT. Returns the rows written. */
  async apply(m: EntityManager, events: PositionedEvent[]): Promise<TenantRow[]> {
    const written = new Map<string, TenantRow>();
    let creations: PositionedEvent[] = [];
    const flush = async () => {
      if (!creations.length) return;
      const params: unknown[] = [];
      const tuples = creations.map(({ position, event }) => {
        const e = event as EventEnvelope & Extract<TenantEvent, { type: typeof T.created }>;
        const values = [e.aggregateId, e.aggregateVersion, position, e.occurredAt, e.data.slug, e.data.name, e.data.plan, JSON.stringify(e.data.quotas), JSON.stringify(e.data.settings)];
        const base = params.length;
        params.push(...values);
        const p = (i: number) => `$${base + i}`;
        return `(${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}, ${p(4)}, ${p(5)}, ${p(6)}, ${p(7)}, ${p(8)}, ${p(9)}, 'active')`;
      });
      creations = [];
      const rows: TenantRow[] = await m.query(
        `INSERT INTO ${TABLE} (id, version, position, created_at, updated_at, slug, name, plan, quotas, settings, status)
         VALUES ${tuples.join(', ')} ON CONFLICT (id) DO NOTHING RETURNING *`,
        params,
      );
      for (const r of rows) written.set(r.id, r);
    };
    for (const positioned of events) {
      if (positioned.event.type === T.created) {
        creations.push(positioned);
        continue;
      }
      await flush();
      const row = await this.update(m, positioned);
      if (row) written.set(row.id, row);
    }
    await flush();
    return [...written.values()];
  }

  private async update(m: EntityManager, { position, event }: PositionedEvent): Promise<TenantRow | undefined> {
    const e = event as EventEnvelope & TenantEvent;
    const id = e.aggregateId;
    const run = async (set: string, values: unknown[]) => {
      const [rows] = await m.query(
        `UPDATE ${TABLE} SET ${set}, version = $2, position = $3, updated_at = $4 WHERE id = $1 AND version < $2 RETURNING *`,
        [id, e.aggregateVersion, position, e.occurredAt, ...values],
      );
      if ((rows as TenantRow[]).length) return (rows as TenantRow[])[0];
      const exists = await m.query(`SELECT 1 FROM ${TABLE} WHERE id = $1`, [id]);
      if (!exists.length) throw new PermanentEventError(`${e.type} for unknown tenant ${id}`);
      return undefined;
    };
    switch (e.type) {
      case T.planChanged:
        return run('plan = $5, quotas = $6', [e.data.plan, JSON.stringify(e.data.quotas)]);
      case T.settingsUpdated:
        return run('settings = $5', [JSON.stringify(e.data.settings)]);
      case T.suspended:
        return run(`status = 'suspended', suspended_reason = $5`, [e.data.reason]);
      case T.reactivated:
        return run(`status = 'active', suspended_reason = NULL`, []);
      case T.closed:
        return run(`status = 'closed'`, []);
      default:
        throw new PermanentEventError(`unknown tenant event type ${(e as EventEnvelope).type}`);
    }
  }

  async afterCommit(rows: TenantRow[]): Promise<void> {
    await this.cache.put(rows.map(rowToTenant));
  }

  async afterRebuild(): Promise<void> {
    await this.cache.clear();
  }
}
