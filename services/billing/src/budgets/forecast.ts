import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { DateTime } from 'luxon';
import { DataSource } from 'typeorm';
import { BILLING_CONTEXT, BUDGET_ALERT_AGGREGATE, billingEventTypes as B, billingRpc, nameBasedUuid, parseOrThrow, UsageForecast } from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { CommandHandler, Decider } from '@keel/event-sourcing';
import { EventStore, InjectConfig, KEEL_LOGGER, MessagePattern } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { repeating } from '../periodic';
import { periodOf, timeZoneOf } from '../usage/periods';
import { D } from '../usage/rating';
import { BudgetRow, spendQuery } from './budget-ledger';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** The run-rate is measured over the last 7 days, or since the period began when that is shorter. */
const WINDOW = 7 * DAY;

type Dec = InstanceType<typeof D>;
type Projected = UsageForecast['budgets'][number];

/** `projected_to_exceed` once per budget and period: the alert's own aggregate, whose first event is its only one. */
type RaiseState = { raised: boolean };
type RaiseCommand = { data: Record<string, unknown> };
const raiseDecider: Decider<RaiseState, RaiseCommand, { type: string; data: Record<string, unknown> }> = {
  initialState: () => ({ raised: false }),
  evolve: () => ({ raised: true }),
  decide: (c, s) => (s.raised ? [] : [{ type: B.projectedToExceed, data: c.data }]),
};

/**
 * Forecasts: the spend so far of a period and its trailing run-rate (the rated costs of the last
 * 7 days, or of the period so far), extended to the period's end; for each budget, when that rate
 * reaches its limit. An evaluator in every billing process raises `projected_to_exceed` for a budget
 * whose limit is projected to be reached before its period ends, once per budget and period.
 */
@Injectable()
export class ForecastHandlers implements OnModuleInit, OnModuleDestroy {
  private readonly raises: CommandHandler<RaiseState, RaiseCommand, { type: string; data: Record<string, unknown> }>;
  private readonly raised = new Set<string>();
  private loop?: { stop(): void };

  constructor(
    store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    @InjectConfig() private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {
    this.raises = new CommandHandler(store, { context: BILLING_CONTEXT, aggregateType: BUDGET_ALERT_AGGREGATE, decider: raiseDecider, cacheSize: 1_000 });
  }

  onModuleInit(): void {
    this.loop = repeating('budget forecasts', this.config.KEEL_FORECAST_INTERVAL_MS, () => this.evaluate(), this.logger);
  }

  onModuleDestroy(): void {
    this.loop?.stop();
  }

  private async sum(tenantId: string, b: Pick<BudgetRow, 'scope_kind' | 'scope_id' | 'unit'>, from: number, to: number): Promise<Dec> {
    if (to <= from) return new D(0);
    const q = spendQuery({ ...b, tenant_id: tenantId }, from, to);
    const [r] = await inTenant(this.ds, tenantId, (m) => m.query(q.sql, q.params));
    return new D(r?.v ?? 0);
  }

  /** A budget's period at `now`: spent, run-rate per day and where it leads. */
  async project(b: BudgetRow, now: number): Promise<Projected> {
    const { start, end } = periodOf(b.period_unit, b.time_zone, now);
    // Through the end of the current minute (the rollups' grain): what was just reported counts.
    const at = Math.floor(now / MINUTE) * MINUTE + MINUTE;
    const spent = await this.sum(b.tenant_id, b, start, at);
    // Within the period only (its first minutes have a short window: the evaluator waits an hour before raising).
    const window = Math.max(MINUTE, Math.min(WINDOW, at - start));
    const recent = await this.sum(b.tenant_id, b, at - window, at);
    const perDay = recent.mul(DAY).div(window);
    const projected = spent.add(perDay.mul(end - at).div(DAY));
    const limit = new D(b.limit);
    let reachAt: number | null = null;
    if (spent.lt(limit) && perDay.gt(0)) {
      const t = at + limit.sub(spent).div(perDay).mul(DAY).toNumber();
      if (t < end) reachAt = Math.ceil(t / MINUTE) * MINUTE;
    }
    const digits = b.unit === 'USD' ? 12 : 0;
    return {
      budgetId: b.id, name: b.name, unit: b.unit, limit: limit.toFixed(), periodStart: new Date(start).toISOString(), periodEnd: new Date(end).toISOString(),
      spent: spent.toFixed(), runRatePerDay: perDay.toDecimalPlaces(digits).toFixed(), projected: projected.toDecimalPlaces(digits).toFixed(),
      projectedToReachAt: reachAt === null ? null : new Date(reachAt).toISOString(), exceeds: reachAt !== null || spent.gte(limit),
    };
  }

  private async budgets(tenantId: string | null): Promise<BudgetRow[]> {
    return inTenant(this.ds, tenantId ?? ALL_TENANTS, (m) =>
      tenantId
        ? m.query(`SELECT * FROM (SELECT * FROM plan_quotas WHERE tenant_id = $1 UNION ALL SELECT * FROM budgets WHERE tenant_id = $1) b ORDER BY created_at, id`, [tenantId])
        : m.query(`SELECT * FROM plan_quotas UNION ALL SELECT * FROM budgets`),
    );
  }

  @MessagePattern('qry.billing.usage_forecast')
  async forecast(body: unknown): Promise<UsageForecast> {
    const q = parseOrThrow(billingRpc.usageForecast.request, body, 'forecast');
    const tenantId = q.tenantId.toLowerCase();
    const [account] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT time_zone FROM billing_accounts WHERE tenant_id = $1`, [tenantId]));
    const zone = timeZoneOf(q.timeZone ?? account?.time_zone ?? 'UTC');
    const now = Date.now();
    const month = { scope_kind: 'tenant' as const, scope_id: '', unit: 'USD' as const };
    const start = DateTime.fromMillis(now, { zone }).startOf('month');
    const end = start.plus({ months: 1 }).toMillis();
    const at = Math.floor(now / MINUTE) * MINUTE + MINUTE;
    const spent = await this.sum(tenantId, month, start.toMillis(), at);
    const window = Math.max(MINUTE, Math.min(WINDOW, at - start.toMillis()));
    const perDay = (await this.sum(tenantId, month, at - window, at)).mul(DAY).div(window);
    const budgets = await Promise.all((await this.budgets(tenantId)).map((b) => this.project(b, now)));
    return {
      tenantId, asOf: new Date(at).toISOString(), from: start.toUTC().toISO()!, to: new Date(end).toISOString(), timeZone: zone, currency: 'USD',
      windowHours: window / HOUR, spent: spent.toFixed(), runRatePerDay: perDay.toDecimalPlaces(12).toFixed(),
      projected: spent.add(perDay.mul(end - at).div(DAY)).toDecimalPlaces(12).toFixed(), budgets,
    };
  }

  /** Every budget with spend in its period: raised once when its limit is projected to be reached before the period ends. */
  async evaluate(now = Date.now()): Promise<void> {
    for (const b of await this.budgets(null)) {
      const { start } = periodOf(b.period_unit, b.time_zone, now);
      const key = `${b.tenant_id}:${b.id}:${start}`;
      // Not on a period's first hour (too little to extrapolate from), and once per budget and period.
      if (this.raised.has(key) || now - start < HOUR) continue;
      await this.raise(b, key, now).catch((error) => this.logger.warn({ err: error, tenantId: b.tenant_id, budgetId: b.id }, 'could not forecast a budget'));
    }
  }

  private async raise(b: BudgetRow, key: string, now: number): Promise<void> {
    {
      const p = await this.project(b, now);
      if (p.projectedToReachAt === null) return;
      const aggregateId = nameBasedUuid(`keel.billing.projected\n${b.tenant_id}\n${b.id}\n${p.periodStart}`);
      await this.raises.handle(
        { tenantId: b.tenant_id, aggregateId },
        { data: { budgetId: b.id, name: b.name, unit: b.unit, limit: p.limit, periodStart: p.periodStart, periodEnd: p.periodEnd, spent: p.spent, projected: p.projected, projectedToReachAt: p.projectedToReachAt } },
        { actor: { kind: 'system', id: 'billing.forecast' }, correlationId: aggregateId },
      );
      this.raised.add(key);
      if (this.raised.size > 100_000) this.raised.delete(this.raised.values().next().value!);
    }
  }
}
