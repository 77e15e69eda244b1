import { EntityManager } from 'typeorm';
import { EventEnvelope, PositionedEvent, Tenant, TenantEvent, tenantEventTypes as T } from '@keel/contracts';
import { PermanentEventError } from '@keel/messaging';
import { applyFolded, FoldedRows, Projection, RebuildChanges } from '@keel/projections';
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
  /** A bigint: a string as Postgres answers it, a number as an event gives it. */
  position: string | number;
  /** A Date as Postgres answers it, an ISO time as an event gives it. */
  created_at: Date | string;
  updated_at: Date | string;
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
    createdAt: new Date(r.created_at).toISOString(),
    updatedAt: new Date(r.updated_at).toISOString(),
  };
}

/** The tenant read model: one row per tenant, kept at the version of its last event. */
export class TenantsProjection implements Projection {
  readonly name = 'tenants';
  readonly contexts = ['tenant'];
  readonly tables = ['tenants'];

  constructor(private readonly cache: TenantCache) {}

  /**
   * Applies events in order: a batch (live) or a replayed page (a rebuild) is folded into rows in
   * memory and written by one statement. Returns the rows written.
   */
  apply(m: EntityManager, events: PositionedEvent[]): Promise<TenantRow[]> {
    return applyFolded(m, tenantRows, events);
  }

  async afterCommit(rows: TenantRow[]): Promise<void> {
    await this.cache.put(rows.map(rowToTenant));
  }

  /** The cache forgets the tenants the swap changed (by id and by slug, old and new); all of them when it changed too many to list. */
  async afterRebuild(changes: RebuildChanges): Promise<void> {
    const changed = changes[TABLE];
    if (changed === undefined) return;
    if (changed === 'all') return this.cache.clear();
    const rows = [...changed.removed, ...changed.added] as unknown as TenantRow[];
    await this.cache.forget(rows.map((r) => ({ id: r.id, slug: r.slug })));
  }
}

/** Each tenant event folded into its row: the row after it, as the live and the rebuilt model both write it. */
export const tenantRows: FoldedRows<TenantRow> = {
  table: TABLE,
  columns: ['id', 'slug', 'name', 'plan', 'quotas', 'settings', 'status', 'suspended_reason', 'version', 'position', 'created_at', 'updated_at'],
  key: 'id',
  version: 'version',
  // As Postgres prints a uuid.
  keyOf: ({ event }) => event.aggregateId.toLowerCase(),
  creates({ event }) {
    const type = (event as EventEnvelope & TenantEvent).type;
    switch (type) {
      case T.created:
        return true;
      case T.planChanged:
      case T.settingsUpdated:
      case T.suspended:
      case T.reactivated:
      case T.closed:
        return false;
      default:
        return unknownType(type, event);
    }
  },
  evolve(row, { position, event }) {
    const e = event as EventEnvelope & TenantEvent;
    if (e.type === T.created) {
      return {
        id: e.aggregateId.toLowerCase(), slug: e.data.slug, name: e.data.name, plan: e.data.plan, quotas: e.data.quotas, settings: e.data.settings,
        status: 'active', suspended_reason: null, version: e.aggregateVersion, position, created_at: e.occurredAt, updated_at: e.occurredAt,
      };
    }
    if (!row) throw new PermanentEventError(`${e.type} for unknown tenant ${e.aggregateId}`);
    const next: TenantRow = { ...row, version: e.aggregateVersion, position, updated_at: e.occurredAt };
    switch (e.type) {
      case T.planChanged:
        return { ...next, plan: e.data.plan, quotas: e.data.quotas };
      case T.settingsUpdated:
        return { ...next, settings: e.data.settings };
      case T.suspended:
        return { ...next, status: 'suspended', suspended_reason: e.data.reason };
      case T.reactivated:
        return { ...next, status: 'active', suspended_reason: null };
      case T.closed:
        return { ...next, status: 'closed' };
      default:
        return unknownType(e, event);
    }
  },
};

function unknownType(_: never, event: EventEnvelope): never {
  throw new PermanentEventError(`unknown tenant event type ${event.type}`);
}
