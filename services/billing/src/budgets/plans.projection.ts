import { EntityManager } from 'typeorm';
import { nameBasedUuid, PositionedEvent, tenantEventTypes as T } from '@keel/contracts';
import { Projection } from '@keel/projections';
import { CatalogueCache } from '../catalogue-cache';
import { PLAN_TABLES } from '../database/migrations/1700000000004-plan-quotas';
import { ACCOUNT_TABLES } from '../database/migrations/1700000000006-invoices';

/** The id of a tenant's plan quota budget (one per tenant, made from its tenant events). */
export const planBudgetId = (tenantId: string) => nameBasedUuid(`keel.billing.plan-budget\n${tenantId.toLowerCase()}`);

/** The runner token of the plans projection (the service's second). */
export const PLANS_RUNNER = Symbol('BILLING_PLANS_RUNNER');

/**
 * Every tenant's plan quota as a budget (rows shaped like `budgets`, in `plan_quotas`): its plan's
 * `monthlyTokenQuota` tokens a calendar month (UTC), hard at 100 %, failing open (when Redis is
 * away the call is let through, its usage still recorded and invoiced). A quota of 0 is none.
 * Its own projection over the tenant events only, so billing reads nothing else of the log.
 */
export class PlansProjection implements Projection {
  readonly name = 'plans';
  readonly contexts = ['tenant'];
  readonly aggregateType = 'tenant';
  readonly tables = [...PLAN_TABLES, ...ACCOUNT_TABLES].map((t) => t.name);

  constructor(private readonly cache?: CatalogueCache) {}

  async afterRebuild(): Promise<void> {
    await this.cache?.bumpAll();
  }

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<Set<string>> {
    const tenants = new Set<string>();
    for (const { position, event } of events) {
      await this.applyAccount(m, position, event);
      if (event.type !== T.created && event.type !== T.planChanged) continue;
      tenants.add(event.tenantId.toLowerCase());
      const quota = (event.data as { quotas?: { monthlyTokenQuota?: number } }).quotas?.monthlyTokenQuota;
      if (typeof quota !== 'number') continue;
      const tenantId = event.tenantId.toLowerCase();
      const id = planBudgetId(tenantId);
      if (quota <= 0) {
        await m.query(`DELETE FROM plan_quotas WHERE tenant_id = $1`, [tenantId]);
        continue;
      }
      await m.query(
        `INSERT INTO plan_quotas (tenant_id, id, name, scope_kind, scope_id, unit, "limit", period_unit, time_zone, thresholds, fail_mode, version, position, created_at, updated_at)
         VALUES ($1, $2, 'Plan: monthly token quota', 'tenant', '', 'tokens', $3, 'month', 'UTC', $4, 'open', $5, $6, $7, $7)
         ON CONFLICT (tenant_id, id) DO UPDATE SET "limit" = EXCLUDED."limit", version = EXCLUDED.version, position = EXCLUDED.position, updated_at = EXCLUDED.updated_at`,
        [tenantId, id, String(quota), JSON.stringify([{ percent: 80, mode: 'warn' }, { percent: 100, mode: 'hard' }]), event.aggregateVersion, position, event.occurredAt],
      );
    }
    // The tenants whose quota or tree changed: their cached budgets are read again once this commits.
    await CatalogueCache.bump(m, tenants);
    return tenants;
  }

  /** The tenant as its invoices need it: plan, seats allowed, time zone (UTC unless set) and since when it exists. */
  private async applyAccount(m: EntityManager, position: number, event: PositionedEvent['event']): Promise<void> {
    const d = event.data as { slug?: string; plan?: string; quotas?: { maxUsers?: number; requestsPerMinute?: number }; settings?: { timeZone?: string } };
    const rpm = typeof d.quotas?.requestsPerMinute === 'number' ? d.quotas.requestsPerMinute : null;
    const tenantId = event.tenantId.toLowerCase();
    if (event.type === T.created) {
      await m.query(
        `INSERT INTO billing_accounts (tenant_id, slug, plan, max_users, time_zone, created_at, position, requests_per_minute) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id) DO NOTHING`,
        [tenantId, d.slug ?? '', d.plan ?? 'custom', d.quotas?.maxUsers ?? 0, d.settings?.timeZone ?? 'UTC', event.occurredAt, position, rpm],
      );
    } else if (event.type === T.planChanged) {
      await m.query(`UPDATE billing_accounts SET plan = $2, max_users = $3, position = $4, requests_per_minute = $5 WHERE tenant_id = $1`, [tenantId, d.plan, d.quotas?.maxUsers ?? 0, position, rpm]);
    } else if (event.type === T.closed) {
      await m.query(`UPDATE billing_accounts SET closed_at = $2, position = $3 WHERE tenant_id = $1`, [tenantId, event.occurredAt, position]);
    } else if (event.type === T.settingsUpdated) {
      await m.query(`UPDATE billing_accounts SET time_zone = $2, position = $3 WHERE tenant_id = $1`, [tenantId, d.settings?.timeZone ?? 'UTC', position]);
    }
  }
}
