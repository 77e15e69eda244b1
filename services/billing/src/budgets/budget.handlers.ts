import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { z } from 'zod';
import {
  BILLING_CONTEXT,
  billingRpc,
  Budget,
  BUDGET_AGGREGATE,
  KeelError,
  newEventId,
  parseOrThrow,
  Quantities,
  reservationSchema,
} from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { aggregateIdFor, CommandHandler } from '@keel/event-sourcing';
import { EventStore, InjectConfig, KEEL_LOGGER, MessagePattern } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ProjectionRunner } from '@keel/projections';
import { repeating } from '../periodic';
import { choosePrice, D, rate, unratedReason } from '../usage/rating';
import { ownKey, UsageHandlers } from '../usage/usage.handlers';
import { planBudgetId } from './plans.projection';
import { BudgetCommand, budgetDecider, BudgetState } from './budget.decider';
import { BudgetLedger, BudgetRow, fromUnits, Hold, RedisUnavailable, tokensOf, toUnits } from './budget-ledger';

type Reservation = z.infer<typeof reservationSchema>;
const SWEEP_MS = 2_000;

/** Redis away mid-way: a 503 to retry (settle and release are safe to repeat), not a 500. */
const unavailable = (error: unknown): never => {
  throw error instanceof RedisUnavailable ? new KeelError('service_unavailable', 'Budget counters cannot be reached right now; retry shortly (it is safe to repeat).') : error;
};

/** Redis away while checking a throttle: the reservation itself decides (its fail mode); a throttle's refusal stands. */
const unavailableUnlessRefused = (error: unknown): void => {
  if (!(error instanceof RedisUnavailable)) throw error;
};

const holdsView = (holds: Hold[]) => holds.map(([, amount, unit, budgetId]) => ({ budgetId, unit, amount: fromUnits(unit, amount) }));

/**
 * Budgets (event-sourced, one aggregate each; the usage projection keeps their rows) and the
 * hot path: reserve before a call on every budget that applies, settle after it with what it used
 * (which becomes its usage record) or release it; a sweeper releases what expired.
 */
@Injectable()
export class BudgetHandlers implements OnModuleInit, OnModuleDestroy {
  private readonly handler: CommandHandler<BudgetState, BudgetCommand, never>;
  private sweeper?: NodeJS.Timeout;
  private drift?: { stop(): void };

  constructor(
    private readonly store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly runner: ProjectionRunner,
    private readonly ledger: BudgetLedger,
    private readonly usage: UsageHandlers,
    @InjectConfig() private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {
    this.handler = new CommandHandler(store, { context: BILLING_CONTEXT, aggregateType: BUDGET_AGGREGATE, decider: budgetDecider as never });
  }

  onModuleInit(): void {
    const sweep = () =>
      Promise.all([
        this.ledger.sweep().then((n) => n && this.logger.info({ released: n }, 'expired reservations released')),
        this.relayAlerts(),
      ])
        .catch(() => undefined)
        .finally(() => {
          if (this.sweeper) this.sweeper = setTimeout(sweep, SWEEP_MS).unref();
        });
    this.sweeper = setTimeout(sweep, SWEEP_MS).unref();
    this.drift = repeating(
      'measuring budget drift',
      this.config.KEEL_BUDGET_DRIFT_INTERVAL_MS,
      async () => {
        for (const d of await this.ledger.measureDrift()) this.logger.warn(d, 'a budget counter drifts from its usage records in Postgres');
      },
      this.logger,
    );
  }

  /**
   * Alerts committed but not yet seen on the log (the publish after the commit failed, or the
   * process stopped in between) are published again; their ids make a second copy inside the
   * stream's duplicate window one message. The usage projection marks each published when it
   * applies it.
   */
  private async relayAlerts(): Promise<void> {
    const rows: { event: never }[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT event FROM budget_alerts WHERE NOT published ORDER BY position LIMIT 100`),
    );
    if (rows.length) await this.store.appendFacts(rows.map((r) => r.event));
  }

  onModuleDestroy(): void {
    this.drift?.stop();
    const t = this.sweeper;
    this.sweeper = undefined;
    if (t) clearTimeout(t);
  }

  private view(tenantId: string, budgetId: string, state: BudgetState, version: number): Budget {
    if (state.status === 'none') throw new KeelError('not_found', 'No such budget in this tenant.');
    const d = state.data;
    return {
      id: budgetId, tenantId, name: d.name, scope: d.scope, unit: d.unit, limit: d.limit, period: d.period, thresholds: d.thresholds,
      failMode: d.failMode, version, createdAt: state.createdAt, updatedAt: state.updatedAt,
    };
  }

  @MessagePattern('cmd.billing.create_budget')
  async create(body: unknown) {
    const { meta, payload } = parseOrThrow(billingRpc.createBudget.request, body, 'budget');
    const tenantId = payload.tenantId.toLowerCase();
    const budgetId = meta.commandId ? aggregateIdFor(meta.commandId, BUDGET_AGGREGATE, tenantId) : newEventId();
    const r = await this.handler.handle({ tenantId, aggregateId: budgetId }, { type: 'create', data: payload.data }, meta, !meta.commandId);
    return { budget: this.view(tenantId, budgetId, r.state, r.version), version: r.version, position: r.position };
  }

  /** The plan's quota budget follows the plan: it is changed by changing the plan, not here. */
  private refusePlanBudget(tenantId: string, budgetId: string): void {
    if (budgetId.toLowerCase() === planBudgetId(tenantId)) {
      throw new KeelError('invalid_transition', "This is the plan's monthly token quota: it changes with the plan (PATCH /api/v1/tenants/{id}/plan), not here.");
    }
  }

  @MessagePattern('cmd.billing.update_budget')
  async update(body: unknown) {
    const { meta, payload } = parseOrThrow(billingRpc.updateBudget.request, body, 'budget change');
    const tenantId = payload.tenantId.toLowerCase();
    this.refusePlanBudget(tenantId, payload.budgetId);
    const r = await this.handler.handle({ tenantId, aggregateId: payload.budgetId }, { type: 'update', data: payload.data }, meta);
    return { budget: this.view(tenantId, payload.budgetId, r.state, r.version), version: r.version, position: r.position };
  }

  @MessagePattern('cmd.billing.delete_budget')
  async remove(body: unknown) {
    const { meta, payload } = parseOrThrow(billingRpc.deleteBudget.request, body, 'budget deletion');
    this.refusePlanBudget(payload.tenantId.toLowerCase(), payload.budgetId);
    const r = await this.handler.handle({ tenantId: payload.tenantId.toLowerCase(), aggregateId: payload.budgetId }, { type: 'delete' }, meta);
    return { deleted: true as const, position: r.position };
  }

  private async withCurrent(b: BudgetRow & { version: number; created_at: Date; updated_at: Date }): Promise<Budget> {
    const base: Budget = {
      id: b.id, tenantId: b.tenant_id, name: b.name, scope: b.scope_kind === 'tenant' ? { kind: 'tenant' } : { kind: b.scope_kind, id: b.scope_id }, unit: b.unit,
      limit: new D(b.limit).toFixed(), period: { unit: b.period_unit, timeZone: b.time_zone }, thresholds: b.thresholds, failMode: b.fail_mode,
      version: b.version, createdAt: b.created_at.toISOString(), updatedAt: b.updated_at.toISOString(),
    };
    const c = await this.ledger.current(b);
    const limit = toUnits(b.unit, new D(b.limit));
    return {
      ...base,
      current: {
        periodStart: new Date(c.start).toISOString(), periodEnd: new Date(c.end).toISOString(),
        spent: fromUnits(b.unit, c.spent), reserved: fromUnits(b.unit, c.reserved), remaining: fromUnits(b.unit, Math.max(0, limit - c.spent - c.reserved)),
      },
    };
  }

  @MessagePattern('qry.billing.budgets')
  async list(body: unknown) {
    const q = parseOrThrow(billingRpc.budgets.request, body, 'budget list');
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const rows = await inTenant(this.ds, q.tenantId, (m) =>
      m.query(`SELECT * FROM (SELECT * FROM plan_quotas WHERE tenant_id = $1 UNION ALL SELECT * FROM budgets WHERE tenant_id = $1) b ORDER BY created_at, id`, [q.tenantId]),
    );
    return { items: await Promise.all(rows.map((r: never) => this.withCurrent(r))) };
  }

  @MessagePattern('qry.billing.budget')
  async get(body: unknown) {
    const q = parseOrThrow(billingRpc.budget.request, body, 'budget');
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const [row] = await inTenant(this.ds, q.tenantId, (m) =>
      m.query(`SELECT * FROM budgets WHERE tenant_id = $1 AND id = $2 UNION ALL SELECT * FROM plan_quotas WHERE tenant_id = $1 AND id = $2`, [q.tenantId, q.budgetId]),
    );
    if (!row) throw new KeelError('not_found', 'No such budget in this tenant.');
    return this.withCurrent(row);
  }

  // ---- the hot path ----

  @MessagePattern('cmd.billing.reserve')
  async reserve(body: unknown): Promise<Reservation> {
    const { meta, payload } = parseOrThrow(billingRpc.reserve.request, body, 'reservation');
    const tenantId = payload.tenantId.toLowerCase();
    const own = ownKey(meta, payload.data.attribution);
    if (own === 'other') {
      throw new KeelError('validation_failed', 'attribution.apiKeyId names another API key than the one reserving.', [{ field: 'attribution.apiKeyId', message: 'an API key reserves for itself' }]);
    }
    const r = own ? { ...payload.data, attribution: own } : payload.data;
    const now = Date.now();
    const { aliases, prices } = await this.usage.catalogue(tenantId, [{ id: r.requestId, kind: 'record', model: r.model }]);
    const model = aliases.get(r.model) ?? r.model;
    const reason = unratedReason(prices, tenantId, model, now, r.estimate, r.gpuType);
    if (reason) throw new KeelError('validation_failed', `The estimate cannot be priced: ${reason}.`, [{ field: 'model', message: reason }]);
    const cost = rate(r.estimate, r.gpuType, choosePrice(prices, tenantId, model, now)!.rates).cost!;
    const { budgets, requestsPerMinute } = await this.ledger.applicableTo(tenantId, r.attribution, model);
    await this.ledger.throttle(tenantId, r.requestId, budgets, requestsPerMinute, now).catch(unavailableUnlessRefused);
    // With no budget applying the reservation is still kept (holding nothing): its settle records the call.
    const amounts = budgets.map((b) => BudgetLedger.amountFor(b, cost, r.estimate));
    let answer;
    try {
      const call = { model, ...(r.gpuType ? { gpuType: r.gpuType } : {}), attribution: r.attribution, source: r.source, estimate: r.estimate };
      answer = await this.ledger.reserve(tenantId, r.requestId, budgets, amounts, r.ttlSeconds * 1_000, call, now);
    } catch (error) {
      if (!(error instanceof RedisUnavailable)) throw error;
      // Fail mode per budget: one closed budget refuses the call; all open ones let it through uncounted.
      const closed = budgets.find((b) => b.fail_mode === 'closed');
      if (closed) throw new KeelError('service_unavailable', `Budget "${closed.name}" cannot be checked right now (it fails closed); retry shortly.`);
      this.logger.warn({ err: error, tenantId }, 'budget counters unavailable; allowing the call (every applicable budget fails open)');
      return { requestId: r.requestId, status: 'unchecked', holds: [] };
    }
    if (answer.status === 'refused') {
      const b = answer.budget;
      const limit = fromUnits(b.unit, BudgetLedger.hardLimit(b));
      const details = {
        budget: {
          id: b.id, name: b.name, unit: b.unit, limit, spent: fromUnits(b.unit, answer.spent), reserved: fromUnits(b.unit, answer.reserved),
          requested: fromUnits(b.unit, amounts[budgets.indexOf(b)]!), resetsAt: new Date(answer.periodEnd).toISOString(),
        },
      };
      throw new KeelError(
        'budget_exceeded',
        `Budget "${b.name}" has no room for this call: limit ${limit} ${b.unit}, spent ${details.budget.spent}, reserved ${details.budget.reserved}, this call ${details.budget.requested}; it resets at ${details.budget.resetsAt}.`,
        undefined,
        details,
      );
    }
    const status = answer.status === 'reserved' ? 'reserved' : (answer.state as Reservation['status']);
    return { requestId: r.requestId, status, expiresAt: new Date(answer.expiresAt).toISOString(), holds: holdsView(answer.holds) };
  }

  @MessagePattern('cmd.billing.settle')
  async settle(body: unknown): Promise<Reservation> {
    const { meta, payload } = parseOrThrow(billingRpc.settle.request, body, 'settlement');
    const tenantId = payload.tenantId.toLowerCase();
    if (payload.data.quantities === undefined && !payload.data.cancelled) {
      throw new KeelError('validation_failed', 'quantities: say what the call used (or that it was cancelled)', [{ field: 'quantities', message: 'say what the call used (or that it was cancelled)' }]);
    }
    const held = await this.held(tenantId, payload.requestId);
    // Settled or released already: answered as it is. Expired: the call still happened, so a late settle still records it.
    if (held.state === 'settled' || held.state === 'released') return { requestId: payload.requestId, status: held.state, holds: holdsView(held.holds) };
    const { model, gpuType, attribution, source } = held.call;
    // A cancelled call is charged at least its input (LiteLLM's lesson: a stream cut short still cost its prompt).
    const quantities: Quantities = payload.data.quantities ?? { inputTokens: held.call.estimate.inputTokens ?? '0' };
    const answer = await this.usage.ingest(
      tenantId,
      source,
      [{ id: payload.requestId, kind: 'record', occurredAt: payload.data.occurredAt ?? new Date().toISOString(), model, gpuType, attribution, quantities }],
      meta,
      true,
    );
    const result = answer.results[0]!;
    if (result.status === 'refused') throw new KeelError('validation_failed', `The usage cannot be recorded: ${result.reason}`, [{ field: 'quantities', message: result.reason! }]);
    const { prices } = await this.usage.catalogue(tenantId, [{ id: payload.requestId, kind: 'record', model }]);
    const at = Date.parse(payload.data.occurredAt ?? new Date().toISOString());
    const price = choosePrice(prices, tenantId, model, at);
    const cost = (price && rate(quantities, gpuType, price.rates).cost) || new D(0);
    const tokens = tokensOf(quantities);
    const [usd, toks] = [toUnits('USD', cost), toUnits('tokens', tokens)];
    const done = await this.ledger.finish(tenantId, payload.requestId, 'settled', usd, toks).catch(unavailable);
    // Ended meanwhile (expired, or it had expired before): the holds are gone, the spend still counts.
    if (done.status !== 'changed') await this.ledger.chargeHolds(held.holds, usd, toks).catch(unavailable);
    const status = 'settled' as const;
    return { requestId: payload.requestId, status, holds: holdsView(held.holds), ...(result.position !== undefined ? { position: result.position } : {}) };
  }

  @MessagePattern('cmd.billing.release')
  async release(body: unknown): Promise<Reservation> {
    const { payload } = parseOrThrow(billingRpc.release.request, body, 'release');
    const tenantId = payload.tenantId.toLowerCase();
    const held = await this.held(tenantId, payload.requestId);
    if (held.state !== 'reserved') return { requestId: payload.requestId, status: held.state as Reservation['status'], holds: holdsView(held.holds) };
    const done = await this.ledger.finish(tenantId, payload.requestId, 'released', 0, 0).catch(unavailable);
    return { requestId: payload.requestId, status: done.status === 'changed' ? 'released' : ((done.state ?? 'released') as Reservation['status']), holds: holdsView(held.holds) };
  }

  /** The reservation and the call it was made for, or 404. */
  private async held(tenantId: string, requestId: string) {
    const r = await this.ledger.reservation(tenantId, requestId).catch((error) => {
      throw error instanceof RedisUnavailable ? new KeelError('service_unavailable', 'Reservations cannot be read right now; retry shortly.') : error;
    });
    if (!r) throw new KeelError('not_found', `No reservation "${requestId}" in this tenant (it may have ended more than 7 days ago).`);
    const call = JSON.parse(r.call) as { model: string; gpuType?: string; attribution: Record<string, string>; source: string; estimate: Quantities };
    return { ...r, call };
  }
}
