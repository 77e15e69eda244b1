import { EntityManager } from 'typeorm';
import { Counter } from 'prom-client';
import { BUDGET_ALERT_AGGREGATE, billingEventTypes as B, EventEnvelope, nameBasedUuid, PositionedEvent, INVOICE_BOOK_AGGREGATE, invoiceEventTypes as I, Quantities, WEBHOOK_AGGREGATE, WEBHOOK_DELIVERY_AGGREGATE } from '@keel/contracts';
import { EventStore, PermanentEventError } from '@keel/messaging';
import { metricsRegistry } from '@keel/observability';
import { Projection } from '@keel/projections';
import { BILLING_TABLES } from '../database/migrations/1700000000001-create-billing';
import { BILLING_SCHEMA } from '../database/schema';
import { BUDGET_TABLES } from '../database/migrations/1700000000002-budgets';
import { ALERT_TABLES } from '../database/migrations/1700000000003-budget-alerts';
import { PLAN_PRICE_TABLES } from '../database/migrations/1700000000006-invoices';
import { BudgetLedger, BudgetRow, spendQuery, tokensOf } from '../budgets/budget-ledger';
import { CatalogueCache } from '../catalogue-cache';
import { periodOf } from './periods';
import { bucketOf } from './periods';
import { choosePrice, D, Dec, PriceRow, rate } from './rating';

/** The attribution columns, as a record's attribution names them. */
export const DIMENSIONS = [
  ['model', 'model'],
  ['user_id', 'userId'],
  ['team_id', 'teamId'],
  ['project_id', 'projectId'],
  ['cost_center', 'costCenter'],
  ['environment', 'environment'],
  ['api_key_id', 'apiKeyId'],
] as const;
/** The quantity columns, as a record's quantities name them; then the cost. */
export const QUANTITIES = [
  ['input_tokens', 'inputTokens'],
  ['cached_input_tokens', 'cachedInputTokens'],
  ['output_tokens', 'outputTokens'],
  ['requests', 'requests'],
  ['gpu_seconds', 'gpuSeconds'],
] as const;
const MEASURES = [...QUANTITIES.map(([c]) => c), 'cost'] as const;
const GRAINS = ['minute', 'hour', 'day'] as const;

type UsageFact = EventEnvelope<{
  source: string;
  recordId: string;
  kind: 'record' | 'amend' | 'cancel';
  target?: string;
  occurredAt?: string;
  model?: string;
  gpuType?: string;
  attribution: Record<string, string>;
  quantities?: Record<string, string>;
  /** Settled through a reservation: its cost went on the budget counters then. */
  viaReservation?: boolean;
}>;

/** What changed on budget counters in a batch (applied to Redis after the commit). */
export interface AppliedUsage {
  /** Changes the Redis counters have not seen (not a settled reservation's record). */
  spent: Counted[];
  /** Every change of what a budget has spent (for the periods kept in Postgres and their alerts). */
  counted: Counted[];
  /** Alerts made in this batch, to publish after the commit. */
  alerts: EventEnvelope[];
  /** The scopes whose budgets or prices changed (their cached copies are read again after the commit). */
  scopes: Set<string>;
}
type Counted = { tenantId: string; occurredAt: number; model: string; attribution: Record<string, string>; cost: Dec; quantities: Quantities; sign: 1 | -1; at: string; position: number };

/** A record as counted now (a row of usage_records). */
export interface RecordRow {
  tenant_id: string;
  source: string;
  record_id: string;
  status: 'active' | 'cancelled';
  occurred_at: string;
  model: string;
  user_id: string;
  team_id: string;
  project_id: string;
  cost_center: string;
  environment: string;
  api_key_id: string;
  gpu_type: string | null;
  input_tokens: string;
  cached_input_tokens: string;
  output_tokens: string;
  requests: string;
  gpu_seconds: string;
  cost: string;
  price_scope: string | null;
  price_model: string | null;
  price_version: number | null;
  corrections: number;
  position: number;
}

const unrated = new Counter({
  name: 'keel_billing_unpriced_records_total',
  help: 'Usage records counted that no price covered (tokens > 0, cost unknown): publish the price, then re-rate',
  registers: [metricsRegistry],
});

const keyOf = (tenantId: string, source: string, id: string) => `${tenantId}\n${source}\n${id}`;
const iso = (t: Date | string) => (t instanceof Date ? t.toISOString() : new Date(t).toISOString());

/** A row as Postgres answers it, in the shape the projection works with. */
function recordFromDb(r: Record<string, unknown>): RecordRow {
  return { ...(r as unknown as RecordRow), occurred_at: iso(r.occurred_at as Date), position: Number(r.position) };
}

/** Per (grain, bucket, attribution): the sums a batch adds to the rollups (negative for what a correction takes back). */
class RollupDeltas {
  private readonly rows = new Map<string, Record<string, unknown>>();

  /** Adds (sign 1) or takes back (sign -1) what a record counts, in each grain's bucket. */
  add(r: RecordRow, sign: 1 | -1): void {
    if (r.status !== 'active') return;
    const at = Date.parse(r.occurred_at);
    for (const grain of GRAINS) {
      const bucket = new Date(bucketOf(at, grain)).toISOString();
      const dims = DIMENSIONS.map(([c]) => r[c]);
      const key = [r.tenant_id, grain, bucket, ...dims].join('\n');
      let row = this.rows.get(key);
      if (!row) {
        row = { tenant_id: r.tenant_id, grain, bucket, records: 0, unpriced: 0 };
        DIMENSIONS.forEach(([c], i) => (row![c] = dims[i]));
        for (const m of MEASURES) row[m] = new D(0);
        this.rows.set(key, row);
      }
      for (const m of MEASURES) row[m] = (row[m] as Dec).plus(new D(r[m]).times(sign));
      row.records = (row.records as number) + sign;
      if (r.price_version === null) row.unpriced = (row.unpriced as number) + sign;
    }
  }

  async write(m: EntityManager): Promise<void> {
    if (!this.rows.size) return;
    const rows = [...this.rows.values()].map((r) => ({ ...r, ...Object.fromEntries(MEASURES.map((c) => [c, (r[c] as Dec).toFixed()])) }));
    const cols = ['tenant_id uuid', 'grain text', 'bucket timestamptz', ...DIMENSIONS.map(([c]) => `${c} text`), ...MEASURES.map((c) => `${c} numeric`), 'records integer', 'unpriced integer'];
    const names = cols.map((c) => c.split(' ')[0]);
    await m.query(
      `INSERT INTO usage_rollups AS r (${names.join(', ')})
       SELECT ${names.join(', ')} FROM jsonb_to_recordset($1::jsonb) AS x(${cols.join(', ')})
       ON CONFLICT (tenant_id, grain, bucket, ${DIMENSIONS.map(([c]) => c).join(', ')}) DO UPDATE SET
         ${[...MEASURES, 'records', 'unpriced'].map((c) => `${c} = r.${c} + EXCLUDED.${c}`).join(', ')}`,
      [JSON.stringify(rows)],
    );
  }
}

const RECORD_COLUMNS = [
  'tenant_id uuid', 'source text', 'record_id text', 'status text', 'occurred_at timestamptz',
  ...DIMENSIONS.map(([c]) => `${c} text`), 'gpu_type text', ...MEASURES.map((c) => `${c} numeric`),
  'price_scope text', 'price_model text', 'price_version integer', 'corrections integer', 'position bigint',
];

/**
 * Usage and prices, from the billing events on the log: each fact (a record or a correction) is
 * counted once, by its (tenant, source, id) in `usage_facts`, in the same transaction as the
 * record's row, the rollups and the checkpoint; a replay or a redelivery adds nothing. Records are
 * rated at the position they are applied with the catalogue as the log has it there, so a rebuild
 * rates every record exactly as the live model did. Prices and their aliases are part of it.
 */
export class UsageProjection implements Projection {
  readonly name = 'usage';
  readonly contexts = ['billing'];
  readonly tables = [...BILLING_TABLES, ...BUDGET_TABLES, ...ALERT_TABLES, ...PLAN_PRICE_TABLES].map((t) => t.name);

  constructor(
    private readonly ledger?: BudgetLedger,
    private readonly store?: EventStore,
    private readonly cache?: CatalogueCache,
  ) {}

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<AppliedUsage> {
    // Per call (a rebuild or a dead letter's retry may apply beside the live batches).
    const applied: AppliedUsage = { spent: [], counted: [], alerts: [], scopes: new Set() };
    let facts: PositionedEvent[] = [];
    for (const pe of events) {
      if (pe.event.type === B.usageRecorded) {
        facts.push(pe);
        continue;
      }
      // Webhook subscriptions and deliveries are the webhooks projection's (they change no usage).
      // (And invoices the invoices projection's.)
      if (pe.event.aggregateType === WEBHOOK_AGGREGATE || pe.event.aggregateType === WEBHOOK_DELIVERY_AGGREGATE || pe.event.aggregateType === INVOICE_BOOK_AGGREGATE) continue;
      // A forecast's alert changes nothing here (it is raised from what is here).
      if (pe.event.type === B.projectedToExceed) continue;
      if (pe.event.type === I.planPricePublished) {
        await this.applyPlanPrice(m, pe);
        continue;
      }
      await this.applyUsage(m, facts, applied);
      // What the records before it spent (and the alerts that makes) comes before the event: a budget change, or an alert's own event.
      await this.applyBudgetSpend(m, applied);
      facts = [];
      if (pe.event.type === B.pricePublished || pe.event.type.startsWith('billing.budget.')) {
        applied.scopes.add(pe.event.type === B.pricePublished ? String((pe.event.data as { scope?: unknown }).scope ?? '').toLowerCase() : pe.event.tenantId.toLowerCase());
      }
      if (pe.event.type === B.pricePublished) await this.applyPrice(m, pe);
      else if (pe.event.type === B.usageRerated) await this.applyRerate(m, pe, applied);
      else if (pe.event.type === B.thresholdCrossed) await m.query(`UPDATE budget_alerts SET published = true WHERE event_id = $1`, [pe.event.id]);
      else if (pe.event.type.startsWith('billing.budget.')) await this.applyBudget(m, pe);
      else throw new PermanentEventError(`unknown billing event type ${pe.event.type}`);
      // A re-rate's changes, before whatever comes next.
      await this.applyBudgetSpend(m, applied);
    }
    await this.applyUsage(m, facts, applied);
    await this.applyBudgetSpend(m, applied);
    await CatalogueCache.bump(m, applied.scopes);
    return applied;
  }

  /**
   * Brings each budget period that this batch's records touched up to what the rollups hold, and
   * records each threshold its spend has reached, once per budget, period
   * and threshold (the key of budget_alerts): a new period has its own keys, so it re-arms.
   */
  private async applyBudgetSpend(m: EntityManager, applied: AppliedUsage): Promise<void> {
    const counted = applied.counted.splice(0);
    if (!counted.length) return;
    // The plan quotas are the plans projection's: always its live table (a rebuild of this one points `budgets` at the shadow copy).
    const budgets: BudgetRow[] = await m.query(`SELECT * FROM budgets WHERE tenant_id = ANY($1) UNION ALL SELECT * FROM "${BILLING_SCHEMA}".plan_quotas WHERE tenant_id = ANY($1)`, [
      [...new Set(counted.map((c) => c.tenantId))],
    ]);
    if (!budgets.length) return;
    const touched = new Map<string, { b: BudgetRow; start: number; end: number; delta: Dec; at: string; position: number }>();
    const ancestors = new Map<string, Map<string, Set<string>>>();
    for (const t of new Set(counted.map((c) => c.tenantId))) {
      ancestors.set(t, await BudgetLedger.teamAncestors(m, t, budgets, counted.filter((c) => c.tenantId === t).map((c) => c.attribution.teamId)));
    }
    for (const c of counted) {
      const forTenant = budgets.filter((b) => b.tenant_id === c.tenantId);
      for (const b of BudgetLedger.applicable(forTenant, c.attribution, c.model, ancestors.get(c.tenantId))) {
        const { start, end } = periodOf(b.period_unit, b.time_zone, c.occurredAt);
        const key = `${b.id}\n${start}`;
        const amount = (b.unit === 'USD' ? c.cost : tokensOf(c.quantities)).times(c.sign);
        const t = touched.get(key);
        if (t) Object.assign(t, { delta: t.delta.plus(amount), at: c.at, position: Math.max(t.position, c.position) });
        else touched.set(key, { b, start, end, delta: amount, at: c.at, position: c.position });
      }
    }
    for (const { b, start, end, delta, at, position } of touched.values()) {
      const { sql, params } = spendQuery(b, start, end);
      const now = new D((await m.query(sql, params))[0].v);
      await m.query(
        `INSERT INTO budget_periods (tenant_id, budget_id, period_start, period_end, spent) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, budget_id, period_start) DO UPDATE SET spent = EXCLUDED.spent`,
        [b.tenant_id, b.id, new Date(start).toISOString(), new Date(end).toISOString(), now.toFixed()],
      );
      for (const t of [...b.thresholds].sort((x, y) => x.percent - y.percent)) {
        const line = new D(b.limit).times(t.percent).div(100);
        // Reached and not yet alerted (the key keeps it once): also a threshold passed before the budget existed or its limit fell.
        if (!now.greaterThanOrEqualTo(line)) continue;
        const periodStart = new Date(start).toISOString();
        const id = nameBasedUuid(`keel.billing.alert\n${b.tenant_id}\n${b.id}\n${periodStart}\n${t.percent}`);
        const event: EventEnvelope = {
          id, type: B.thresholdCrossed, schemaVersion: 1, tenantId: b.tenant_id, aggregateType: BUDGET_ALERT_AGGREGATE, aggregateId: id, aggregateVersion: 1,
          occurredAt: at, actor: { kind: 'service', id: 'billing' }, correlationId: id,
          data: { budgetId: b.id, name: b.name, unit: b.unit, limit: new D(b.limit).toFixed(), periodStart, periodEnd: new Date(end).toISOString(), percent: t.percent, mode: t.mode, spent: now.toFixed() },
        };
        const made = await m.query(
          `INSERT INTO budget_alerts (tenant_id, budget_id, period_start, percent, event_id, event, published, position) VALUES ($1, $2, $3, $4, $5, $6, false, $7)
           ON CONFLICT DO NOTHING RETURNING event_id`,
          [b.tenant_id, b.id, periodStart, t.percent, id, JSON.stringify(event), position],
        );
        if (made.length) applied.alerts.push(event);
      }
    }
  }

  /**
   * After the commit: the alerts made onto the log (their ids dedupe a second publish; one that
   * fails is published by the relay, see `unpublishedAlerts`), and usage reported directly onto the
   * budget counters.
   */
  async afterCommit(applied: AppliedUsage): Promise<void> {
    // Failures are logged by the runner; a lost alert publish is made by the relay, a lost counter change by the next seed.
    const results = await Promise.allSettled([
      this.store?.appendFacts(applied.alerts.length ? applied.alerts : []),
      this.ledger?.addSpent(applied.spent),
    ]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** A rebuild swapped the tables: every cached copy is read again. */
  async afterRebuild(): Promise<void> {
    await this.cache?.bumpAll();
  }

  private async applyBudget(m: EntityManager, { position, event }: PositionedEvent): Promise<void> {
    if (event.type === B.budgetCreated) {
      const d = event.data as { name: string; scope: { kind: string; id?: string }; unit: string; limit: string; period: { unit: string; timeZone: string }; thresholds: unknown[]; failMode: string };
      await m.query(
        `INSERT INTO budgets (tenant_id, id, name, scope_kind, scope_id, unit, "limit", period_unit, time_zone, thresholds, fail_mode, version, position, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) ON CONFLICT DO NOTHING`,
        [event.tenantId, event.aggregateId, d.name, d.scope.kind, d.scope.id ?? '', d.unit, d.limit, d.period.unit, d.period.timeZone, JSON.stringify(d.thresholds), d.failMode, event.aggregateVersion, position, event.occurredAt],
      );
    } else if (event.type === B.budgetUpdated) {
      const c = (event.data as { changes: { name?: string; limit?: string; thresholds?: unknown[]; failMode?: string } }).changes;
      await m.query(
        `UPDATE budgets SET name = coalesce($3, name), "limit" = coalesce($4::numeric, "limit"), thresholds = coalesce($5::jsonb, thresholds), fail_mode = coalesce($6, fail_mode),
                version = $7, position = $8, updated_at = $9 WHERE tenant_id = $1 AND id = $2`,
        [event.tenantId, event.aggregateId, c.name ?? null, c.limit ?? null, c.thresholds ? JSON.stringify(c.thresholds) : null, c.failMode ?? null, event.aggregateVersion, position, event.occurredAt],
      );
    } else if (event.type === B.budgetDeleted) {
      await m.query(`DELETE FROM budgets WHERE tenant_id = $1 AND id = $2`, [event.tenantId, event.aggregateId]);
    } else {
      throw new PermanentEventError(`unknown billing event type ${event.type}`);
    }
  }

  /** A record's change, for the budgets' periods and (unless a settle put it there already) the Redis counters. */
  private spent(applied: AppliedUsage, r: RecordRow, sign: 1 | -1, at: string, redis = true): void {
    if (r.status !== 'active') return;
    const c: Counted = {
      tenantId: r.tenant_id,
      occurredAt: Date.parse(r.occurred_at),
      model: r.model,
      attribution: Object.fromEntries(DIMENSIONS.slice(1).filter(([c]) => r[c] !== '').map(([c, a]) => [a, r[c]])),
      cost: new D(r.cost),
      quantities: Object.fromEntries(QUANTITIES.map(([c, q]) => [q, r[c]])) as Quantities,
      sign,
      at,
      position: r.position,
    };
    applied.counted.push(c);
    if (redis) applied.spent.push(c);
  }

  /** A plan price version (the platform's, or a tenant's own), as the invoices read it. */
  private async applyPlanPrice(m: EntityManager, { position, event }: PositionedEvent): Promise<void> {
    const d = event.data as { scope: string; plan: string; currency: string; seat: string; fixedFee: string; includedUsage: string; usageCap: string | null; minimum: string | null; effectiveFrom: string };
    await m.query(
      `INSERT INTO plan_prices (scope, plan, version, currency, seat, fixed_fee, included_usage, usage_cap, minimum, effective_from, published_at, position)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING`,
      [d.scope, d.plan, event.aggregateVersion, d.currency, d.seat, d.fixedFee, d.includedUsage, d.usageCap, d.minimum, d.effectiveFrom, event.occurredAt, position],
    );
  }

  private async applyPrice(m: EntityManager, { position, event }: PositionedEvent): Promise<void> {
    const d = event.data as { scope: string; model: string; aliases: string[]; currency: string; rates: object; effectiveFrom: string; effectiveTo: string | null };
    await m.query(
      `INSERT INTO prices (scope, model, version, aliases, currency, rates, effective_from, effective_to, published_at, position)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING`,
      [d.scope, d.model, event.aggregateVersion, d.aliases, d.currency, JSON.stringify(d.rates), d.effectiveFrom, d.effectiveTo, event.occurredAt, position],
    );
    if (d.aliases.length) {
      await m.query(
        `INSERT INTO model_aliases (scope, alias, model) SELECT $1, a, $2 FROM unnest($3::text[]) AS a
         ON CONFLICT (scope, alias) DO UPDATE SET model = EXCLUDED.model`,
        [d.scope, d.model, d.aliases],
      );
    }
  }

  /** The prices of `models` that can rate usage of `tenants` (theirs and the platform's). */
  private async prices(m: EntityManager, tenants: string[], models: string[]): Promise<PriceRow[]> {
    if (!models.length) return [];
    return m.query(`SELECT scope, model, version, rates, effective_from, effective_to FROM prices WHERE model = ANY($1) AND scope = ANY($2)`, [
      [...new Set(models)],
      ['platform', ...new Set(tenants)],
    ]);
  }

  private async applyUsage(m: EntityManager, events: PositionedEvent[], applied: AppliedUsage): Promise<void> {
    if (!events.length) return;
    // Each fact once: the first of each (tenant, source, id) in the batch, and only those not counted before.
    const firsts = new Map<string, { position: number; fact: UsageFact }>();
    for (const { position, event } of events) {
      const fact = event as UsageFact;
      const key = keyOf(fact.tenantId, fact.data.source, fact.data.recordId);
      if (!firsts.has(key)) firsts.set(key, { position, fact });
    }
    const claimed: { tenant_id: string; source: string; fact_id: string }[] = await m.query(
      `INSERT INTO usage_facts (tenant_id, source, fact_id, kind, position)
       SELECT tenant_id, source, fact_id, kind, position FROM jsonb_to_recordset($1::jsonb) AS x(tenant_id uuid, source text, fact_id text, kind text, position bigint)
       ON CONFLICT DO NOTHING RETURNING tenant_id, source, fact_id`,
      [JSON.stringify([...firsts.values()].map(({ position, fact }) => ({ tenant_id: fact.tenantId, source: fact.data.source, fact_id: fact.data.recordId, kind: fact.data.kind, position })))],
    );
    const fresh = new Set(claimed.map((c) => keyOf(c.tenant_id, c.source, c.fact_id)));
    const todo = [...firsts.entries()].filter(([k]) => fresh.has(k)).map(([, v]) => v);
    if (!todo.length) return;

    // What the new facts touch: the records they correct, the corrections waiting for the records they create.
    const targets = todo.filter(({ fact }) => fact.data.kind !== 'record').map(({ fact }) => ({ tenant_id: fact.tenantId, source: fact.data.source, record_id: fact.data.target! }));
    const created = todo.filter(({ fact }) => fact.data.kind === 'record').map(({ fact }) => ({ tenant_id: fact.tenantId, source: fact.data.source, record_id: fact.data.recordId }));
    const records = new Map<string, RecordRow>();
    if (targets.length) {
      const rows: Record<string, unknown>[] = await m.query(
        `SELECT r.* FROM usage_records r JOIN jsonb_to_recordset($1::jsonb) AS x(tenant_id uuid, source text, record_id text)
           ON r.tenant_id = x.tenant_id AND r.source = x.source AND r.record_id = x.record_id`,
        [JSON.stringify(targets)],
      );
      for (const r of rows) records.set(keyOf(r.tenant_id as string, r.source as string, r.record_id as string), recordFromDb(r));
    }
    const waiting = new Map<string, { position: number; fact: UsageFact; factId: string }[]>();
    if (created.length) {
      // TypeORM answers a DELETE … RETURNING as [rows, count].
      const [rows]: [{ tenant_id: string; source: string; fact_id: string; target: string; position: string; fact: UsageFact }[], number] = await m.query(
        `DELETE FROM pending_corrections p USING jsonb_to_recordset($1::jsonb) AS x(tenant_id uuid, source text, record_id text)
          WHERE p.tenant_id = x.tenant_id AND p.source = x.source AND p.target = x.record_id
          RETURNING p.tenant_id, p.source, p.fact_id, p.target, p.position, p.fact`,
        [JSON.stringify(created)],
      );
      for (const r of rows) {
        const key = keyOf(r.tenant_id, r.source, r.target);
        waiting.set(key, [...(waiting.get(key) ?? []), { position: Number(r.position), fact: r.fact, factId: r.fact_id }].sort((a, b) => a.position - b.position));
      }
    }
    const models = [...todo.map(({ fact }) => fact.data.model), ...[...waiting.values()].flat().map(({ fact }) => fact.data.model)].filter((x): x is string => !!x);
    const prices = await this.prices(m, [...new Set(todo.map(({ fact }) => fact.tenantId))], models);

    const deltas = new RollupDeltas();
    const changed = new Map<string, RecordRow>();
    /** Corrections that came in this batch before their record (they wait in pending_corrections unless it comes later in the batch). */
    const arrivedEarly = new Set<UsageFact>();
    const apply = (fact: UsageFact, position: number) => {
      const d = fact.data;
      if (d.kind === 'record') {
        const key = keyOf(fact.tenantId, d.source, d.recordId);
        const row = this.rated(
          { tenant_id: fact.tenantId, source: d.source, record_id: d.recordId, status: 'active', occurred_at: iso(d.occurredAt!), corrections: 0, position },
          d, prices,
        );
        records.set(key, row);
        changed.set(key, row);
        deltas.add(row, 1);
        this.spent(applied, row, 1, fact.occurredAt, !d.viaReservation);
        const early = waiting.get(key) ?? [];
        waiting.delete(key);
        for (const w of early) {
          arrivedEarly.delete(w.fact);
          apply(w.fact, w.position);
        }
        return;
      }
      const key = keyOf(fact.tenantId, d.source, d.target!);
      const before = records.get(key);
      if (!before) {
        // Its record has not come yet: the correction waits for it (and is applied when it comes).
        waiting.set(key, [...(waiting.get(key) ?? []), { position, fact, factId: d.recordId }]);
        arrivedEarly.add(fact);
        return;
      }
      // A cancelled record stays cancelled: a later amend of it changes nothing (it is still counted as a fact).
      if (before.status !== 'active') return;
      deltas.add(before, -1);
      const after: RecordRow =
        d.kind === 'cancel'
          ? { ...before, status: 'cancelled', corrections: before.corrections + 1, position }
          : this.rated({ ...before, corrections: before.corrections + 1, position }, d, prices);
      deltas.add(after, 1);
      this.spent(applied, before, -1, fact.occurredAt);
      this.spent(applied, after, 1, fact.occurredAt);
      records.set(key, after);
      changed.set(key, after);
    };
    for (const { position, fact } of todo) apply(fact, position);

    if (changed.size) {
      const names = RECORD_COLUMNS.map((c) => c.split(' ')[0]!);
      await m.query(
        `INSERT INTO usage_records (${names.join(', ')})
         SELECT ${names.join(', ')} FROM jsonb_to_recordset($1::jsonb) AS x(${RECORD_COLUMNS.join(', ')})
         ON CONFLICT (tenant_id, source, record_id) DO UPDATE SET ${names.slice(3).map((c) => `${c} = EXCLUDED.${c}`).join(', ')}`,
        [JSON.stringify([...changed.values()])],
      );
    }
    const pending = [...waiting.values()].flat().filter((w) => arrivedEarly.has(w.fact))
      .map(({ position, fact, factId }) => ({ tenant_id: fact.tenantId, source: fact.data.source, fact_id: factId, target: fact.data.target!, position, fact }));
    if (pending.length) {
      await m.query(
        `INSERT INTO pending_corrections (tenant_id, source, fact_id, target, position, fact)
         SELECT tenant_id, source, fact_id, target, position, fact FROM jsonb_to_recordset($1::jsonb) AS x(tenant_id uuid, source text, fact_id text, target text, position bigint, fact jsonb)`,
        [JSON.stringify(pending)],
      );
    }
    await deltas.write(m);
  }

  /** `base` with a fact's model, attribution and quantities, rated at its time. */
  private rated(base: Pick<RecordRow, 'tenant_id' | 'source' | 'record_id' | 'status' | 'occurred_at' | 'corrections' | 'position'>, d: UsageFact['data'], prices: PriceRow[]): RecordRow {
    const row = {
      ...base,
      model: d.model!,
      gpu_type: d.gpuType ?? null,
      ...Object.fromEntries(DIMENSIONS.slice(1).map(([c, a]) => [c, d.attribution[a] ?? ''])),
      ...Object.fromEntries(QUANTITIES.map(([c, q]) => [c, d.quantities?.[q] ?? '0'])),
    } as Omit<RecordRow, 'cost' | 'price_scope' | 'price_model' | 'price_version'>;
    return withRating(row, prices);
  }

  /** Every active record of the tenant in [from, to) rated again with the prices as the log has them here. */
  private async applyRerate(m: EntityManager, { position, event }: PositionedEvent, applied: AppliedUsage): Promise<void> {
    const { from, to } = event.data as { from: string; to: string };
    const rows = (
      await m.query(`SELECT * FROM usage_records WHERE tenant_id = $1 AND status = 'active' AND occurred_at >= $2 AND occurred_at < $3`, [event.tenantId, from, to])
    ).map(recordFromDb) as RecordRow[];
    if (!rows.length) return;
    const prices = await this.prices(m, [event.tenantId], rows.map((r) => r.model));
    const deltas = new RollupDeltas();
    const changed: RecordRow[] = [];
    for (const before of rows) {
      const after = withRating(before, prices);
      if (after.cost === before.cost && after.price_version === before.price_version && after.price_scope === before.price_scope) continue;
      deltas.add(before, -1);
      deltas.add(after, 1);
      this.spent(applied, before, -1, event.occurredAt);
      this.spent(applied, { ...after, position }, 1, event.occurredAt);
      changed.push({ ...after, position });
    }
    if (changed.length) {
      await m.query(
        `UPDATE usage_records r SET cost = x.cost, price_scope = x.price_scope, price_model = x.price_model, price_version = x.price_version, position = x.position
           FROM jsonb_to_recordset($1::jsonb) AS x(tenant_id uuid, source text, record_id text, cost numeric, price_scope text, price_model text, price_version integer, position bigint)
          WHERE r.tenant_id = x.tenant_id AND r.source = x.source AND r.record_id = x.record_id`,
        [JSON.stringify(changed)],
      );
    }
    await deltas.write(m);
  }
}

/** A record with its cost and the price version that gave it (none, and cost 0 not counted, when no price covers it). */
export function withRating<R extends Omit<RecordRow, 'cost' | 'price_scope' | 'price_model' | 'price_version'>>(row: R, prices: PriceRow[]): RecordRow {
  const price = choosePrice(prices, row.tenant_id, row.model, Date.parse(row.occurred_at));
  const quantities = Object.fromEntries(QUANTITIES.map(([c, q]) => [q, row[c]])) as Quantities;
  const rated = price ? rate(quantities, row.gpu_type, price.rates) : undefined;
  if (!price || !rated?.cost) {
    unrated.inc();
    return { ...row, cost: '0', price_scope: null, price_model: null, price_version: null };
  }
  return { ...row, cost: rated.cost.toFixed(), price_scope: price.scope, price_model: price.model, price_version: price.version };
}
