import Redis from 'ioredis';
import { DataSource } from 'typeorm';
import { Counter, Gauge } from 'prom-client';
import { Attribution, BudgetScopeKind, KeelError, Quantities } from '@keel/contracts';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { metricsRegistry, withTimeout } from '@keel/observability';
import { CatalogueCache } from '../catalogue-cache';
import { BILLING_SCHEMA } from '../database/schema';
import { bucketCondition, PeriodUnit, periodOf } from '../usage/periods';
import { D, Dec } from '../usage/rating';

/** A budget as the projection keeps it. */
export interface BudgetRow {
  tenant_id: string;
  id: string;
  name: string;
  scope_kind: BudgetScopeKind;
  scope_id: string;
  unit: 'USD' | 'tokens';
  limit: string;
  period_unit: PeriodUnit;
  time_zone: string;
  thresholds: { percent: number; mode: 'warn' | 'soft' | 'throttle' | 'hard'; share?: number }[];
  fail_mode: 'closed' | 'open';
}

/**
 * The SQL that adds up a budget's spend over [start, end) from the rollups (whole UTC days, then the
 * hours and minutes at the edges), in its unit: USD, or tokens. Answers one row, `v` as text.
 */
export function spendQuery(b: Pick<BudgetRow, 'tenant_id' | 'scope_kind' | 'scope_id' | 'unit'>, start: number, end: number): { sql: string; params: unknown[] } {
  const params: unknown[] = [b.tenant_id];
  const buckets = bucketCondition(start, end, params);
  let scope = '';
  if (b.scope_kind === 'team') {
    // The team and every team below it in auth's tree (the teams projection's live table).
    params.push(b.scope_id.toLowerCase());
    const n = params.length;
    scope = ` AND (lower(team_id) IN (WITH RECURSIVE sub(id) AS (SELECT $${n}::text
      UNION SELECT t.id FROM "${BILLING_SCHEMA}".teams t JOIN sub ON t.parent_id = sub.id WHERE t.tenant_id = $1) SELECT id FROM sub))`;
  } else if (b.scope_kind !== 'tenant') {
    params.push(b.scope_id);
    scope = ` AND ${SCOPE_COLUMN[b.scope_kind]} = $${params.length}`;
  }
  const measure = b.unit === 'USD' ? 'cost' : 'input_tokens + cached_input_tokens + output_tokens';
  return { sql: `SELECT coalesce(sum(${measure}), 0)::text AS v FROM usage_rollups WHERE tenant_id = $1 AND ${buckets}${scope}`, params };
}

/** A hold on one budget's counter: its key, the amount (micro-USD or tokens) and the unit. */
export type Hold = [key: string, amount: number, unit: 'USD' | 'tokens', budgetId: string];

/** Counters hold integers: micro-dollars for USD budgets, tokens for token budgets. */
const MICRO = new D(1_000_000);
export const toUnits = (unit: 'USD' | 'tokens', value: Dec): number => (unit === 'USD' ? value.times(MICRO) : value).ceil().toNumber();
export const fromUnits = (unit: 'USD' | 'tokens', units: number): string => (unit === 'USD' ? new D(units).div(MICRO) : new D(units)).toFixed();
/** Tokens a budget counts: input, cached input and output together. */
export const tokensOf = (q: Quantities) => new D(q.inputTokens ?? 0).plus(q.cachedInputTokens ?? 0).plus(q.outputTokens ?? 0);

/** The rollup column a budget's scope filters on. */
const SCOPE_COLUMN: Record<Exclude<BudgetScopeKind, 'tenant'>, string> = {
  team: 'team_id', user: 'user_id', project: 'project_id', model: 'model', environment: 'environment', apiKey: 'api_key_id',
};
const ATTRIBUTION: Record<Exclude<BudgetScopeKind, 'tenant' | 'model'>, keyof Attribution> = {
  team: 'teamId', user: 'userId', project: 'projectId', environment: 'environment', apiKey: 'apiKeyId',
};

/** A tenant's own budgets and its plan's quota (see PlansProjection). */
const TENANT_BUDGETS = `SELECT * FROM budgets WHERE tenant_id = $1 UNION ALL SELECT * FROM plan_quotas WHERE tenant_id = $1 ORDER BY id`;

const REDIS_TIMEOUT_MS = 500;
/** A sliding minute of throttled calls: -1 and the call counted, or how many there were (refused). */
const THROTTLE = `redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[1]) - 60000)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return n end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], 61000)
return -1`;
/** How long a finished reservation is remembered (a settle or release retried later answers the same). */
const FINISHED_MS = 7 * 86_400_000;
/** A counter lives past its period's end by this (late settles still land on it). */
const COUNTER_GRACE_MS = 2 * 86_400_000;

const drifting = new Gauge({
  name: 'keel_billing_budgets_drifting',
  help: "Budgets whose Redis counter differed from their usage records in Postgres at two checks in a row (alert on > 0)",
  registers: [metricsRegistry],
});
const driftOf = new Gauge({
  name: 'keel_billing_budget_drift',
  help: 'Of each drifting budget only: its counter less what Postgres holds, in its units (micro-USD or tokens)',
  labelNames: ['tenant_id', 'budget_id'],
  registers: [metricsRegistry],
});
const driftMax = new Gauge({ name: 'keel_billing_budget_drift_ratio_max', help: "The largest such difference at the last check, as a share of the budget's limit", registers: [metricsRegistry] });
const expired = new Counter({ name: 'keel_billing_reservations_expired_total', help: 'Reservations released by the sweeper because they were neither settled nor released in time', registers: [metricsRegistry] });

/**
 * Reserves room on every applicable budget in one Lua script: all or none. KEYS[1] the reservation,
 * KEYS[2] the expiry set, KEYS[3…] the counters (a hash: spent, reserved). ARGV[1] the set member,
 * ARGV[2] expiry (ms), ARGV[3] the reservation's TTL, ARGV[4] the counters' TTL, ARGV[5] the holds
 * as JSON, ARGV[6] the call (model, attribution, estimate: what a settle records); then per counter: amount, limit (-1: no hard limit), seed (spent from Postgres; -1: none
 * computed). A counter that does not exist is created from its seed (never added to: a seed is
 * what Postgres holds, so two seeders agree), or answered `cold` when it has none.
 */
const RESERVE_LUA = `
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'exists', state, redis.call('HGET', KEYS[1], 'holds'), redis.call('HGET', KEYS[1], 'expiresAt')} end
local n = #KEYS - 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + i]) == 0 then
    local seed = ARGV[6 + 3 * i]
    if seed == '-1' then return {'cold', tostring(i)} end
    redis.call('HSET', KEYS[2 + i], 'spent', seed, 'reserved', 0)
  end
end
for i = 1, n do
  local limit = tonumber(ARGV[6 + 3 * i - 1])
  if limit >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[2 + i], 'spent') or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[2 + i], 'reserved') or '0')
    if spent + reserved + tonumber(ARGV[6 + 3 * i - 2]) > limit then return {'refused', tostring(i), tostring(spent), tostring(reserved)} end
  end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[2 + i], 'reserved', ARGV[6 + 3 * i - 2])
  redis.call('PEXPIRE', KEYS[2 + i], ARGV[4])
end
redis.call('HSET', KEYS[1], 'state', 'reserved', 'holds', ARGV[5], 'call', ARGV[6], 'expiresAt', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {'reserved'}
`;

/**
 * Ends a reservation once: KEYS[1] the reservation, KEYS[2] the expiry set. ARGV[1] the member,
 * ARGV[2] the final state (settled, released, expired), ARGV[3] what was used in micro-USD, ARGV[4]
 * in tokens, ARGV[5] how long the finished reservation is remembered. Each hold's reservation comes
 * off its counter and what was used goes on as spent. Answers `missing`, `done` (with the state it
 * already had) or `changed`.
 */
const FINISH_LUA = `
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'reserved' then return {'done', state} end
local holds = cjson.decode(redis.call('HGET', KEYS[1], 'holds'))
for _, h in ipairs(holds) do
  if redis.call('EXISTS', h[1]) == 1 then
    local held = tonumber(h[2])
    if held ~= 0 then
      -- A counter made again while this was held (Redis lost it) never held it: not below 0.
      local left = redis.call('HINCRBY', h[1], 'reserved', string.format('%d', -held))
      if left < 0 then redis.call('HSET', h[1], 'reserved', 0) end
    end
    local used = ARGV[4]
    if h[3] == 'USD' then used = ARGV[3] end
    if used ~= '0' then redis.call('HINCRBY', h[1], 'spent', used) end
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
return {'changed'}
`;

/** Adds spent to counters that exist (a missing one is seeded from Postgres when next needed). ARGV: amounts, in KEYS' order. */
const ADD_SPENT_LUA = `
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'spent', ARGV[i]) end
end
return 1
`;

type Scripts = Redis & {
  keelBudgetReserve(...args: (string | number)[]): Promise<string[]>;
  keelBudgetFinish(...args: (string | number)[]): Promise<string[]>;
  keelBudgetAddSpent(...args: (string | number)[]): Promise<number>;
};

export class RedisUnavailable extends Error {}

/**
 * Budgets on the hot path: which apply to a call, their counters in Redis (keyed by budget and
 * period start, so no reset job exists: a new period is a new key), reservations and their end.
 * Postgres is the source of truth: a counter that Redis does not have is seeded from the usage
 * records in the period (`usage_rollups`), with set-if-absent semantics.
 */
export class BudgetLedger {
  private readonly redis: Scripts;

  constructor(
    redis: Redis,
    private readonly ds: DataSource,
    private readonly prefix: string,
    /** Resolves once the usage projection has applied what is on the log (before a counter is seeded from it). */
    private readonly caughtUp: () => Promise<void> = async () => undefined,
    /** Keeps each tenant's budgets and team tree between calls (see CatalogueCache). */
    private readonly cache?: CatalogueCache,
  ) {
    this.redis = redis as Scripts;
    if (!this.redis.keelBudgetReserve) {
      redis.defineCommand('keelBudgetReserve', { lua: RESERVE_LUA });
      redis.defineCommand('keelBudgetFinish', { numberOfKeys: 2, lua: FINISH_LUA });
      redis.defineCommand('keelBudgetAddSpent', { lua: ADD_SPENT_LUA });
    }
  }

  private get expirySet(): string {
    return `${this.prefix}billing:reservation-expiries`;
  }

  reservationKey(tenantId: string, requestId: string): string {
    return `${this.prefix}billing:reservation:${tenantId}:${requestId}`;
  }

  counterKey(b: BudgetRow, periodStart: number): string {
    return `${this.prefix}billing:budget:${b.tenant_id}:${b.id}:${periodStart}`;
  }

  /**
   * The tenant's budgets, from the read model: one indexed query, not a cache, so a budget applies
   * as soon as the projection has it (`consistentWith` its create) in every process.
   */
  budgets(tenantId: string): Promise<BudgetRow[]> {
    // The tenant's own budgets and its plan's quota (see PlansProjection).
    return inTenant(this.ds, tenantId, (m) => m.query(TENANT_BUDGETS, [tenantId]));
  }

  /**
   * The budgets a call counts against (see `applicable`): the tenant's budgets and team tree, read
   * in one transaction and kept in the process while the tenant's generation is unchanged.
   */
  async applicableTo(tenantId: string, attribution: Attribution, model: string): Promise<{ budgets: BudgetRow[]; requestsPerMinute: number | null }> {
    const load = () =>
      inTenant(this.ds, tenantId, async (m) => {
        const all: BudgetRow[] = await m.query(TENANT_BUDGETS, [tenantId]);
        const parents: { id: string; parent_id: string }[] = all.some((b) => b.scope_kind === 'team')
          ? await m.query(`SELECT id, parent_id FROM "${BILLING_SCHEMA}".teams WHERE tenant_id = $1 AND parent_id IS NOT NULL`, [tenantId])
          : [];
        // A throttle threshold takes a share of the plan's requests a minute.
        const [account]: { requests_per_minute: number | null }[] = all.some((b) => b.thresholds.some((t) => t.mode === 'throttle'))
          ? await m.query(`SELECT requests_per_minute FROM "${BILLING_SCHEMA}".billing_accounts WHERE tenant_id = $1`, [tenantId])
          : [];
        return { all, parents: new Map(parents.map((p) => [p.id, p.parent_id])), rpm: account?.requests_per_minute ?? null };
      });
    const gens = this.cache ? await this.cache.generations([tenantId]) : null;
    const { all, parents, rpm } = gens === null ? await load() : await this.cache!.get(`budgets:${tenantId}`, gens, load);
    const up = new Map<string, Set<string>>();
    const team = attribution.teamId?.toLowerCase();
    if (team) {
      const above = new Set<string>();
      for (let t = parents.get(team); t !== undefined && !above.has(t); t = parents.get(t)) above.add(t);
      up.set(team, above);
    }
    return { budgets: BudgetLedger.applicable(all, attribution, model, up), requestsPerMinute: rpm };
  }

  /**
   * Throttle thresholds: once a budget's period has spent past one, its calls are limited to the
   * threshold's share of the tenant's requests a minute (a sliding minute, counted in Redis across
   * every process), and a call beyond is refused with 429 naming the budget. A budget whose counter
   * Redis does not hold yet is not throttled until it does (the reservation seeds it).
   */
  async throttle(tenantId: string, requestId: string, budgets: BudgetRow[], requestsPerMinute: number | null, now = Date.now()): Promise<void> {
    for (const b of budgets) {
      const lines = b.thresholds.filter((t) => t.mode === 'throttle');
      if (!lines.length) continue;
      const { start } = periodOf(b.period_unit, b.time_zone, now);
      const spent = Number((await this.redisCall(this.redis.hget(this.counterKey(b, start), 'spent'), 'read a budget counter')) ?? 0);
      const passed = lines.filter((t) => spent >= toUnits(b.unit, new D(b.limit).times(t.percent).div(100)));
      if (!passed.length) continue;
      const t = passed.reduce((a, x) => ((x.share ?? 0.5) < (a.share ?? 0.5) ? x : a));
      const share = t.share ?? 0.5;
      const allowed = Math.max(1, Math.floor((requestsPerMinute ?? 600) * share));
      const key = `${this.prefix}billing:throttle:${b.tenant_id}:${b.id}`;
      const n = Number(await this.redisCall(this.redis.eval(THROTTLE, 1, key, now, allowed, `${requestId}\n${now}`) as Promise<number>, 'count throttled calls'));
      if (n >= 0) {
        throw new KeelError('rate_limited', `Budget "${b.name}" passed ${t.percent} % of its limit: its calls are throttled to ${allowed} a minute (${share * 100} % of the tenant's ${requestsPerMinute ?? 600}); retry shortly.`, undefined, {
          budget: { id: b.id, name: b.name, percent: t.percent, share, perMinute: allowed },
          retryAfterSeconds: 60,
        });
      }
    }
  }

  /**
   * The budgets a call with this attribution and model counts against: the tenant's, and each scope
   * it names; a team's also when the call's team is below it (`ancestors`: of each team id, the
   * teams above it, lower-cased, see `teamAncestors`).
   */
  static applicable(budgets: BudgetRow[], attribution: Attribution, model: string, ancestors?: Map<string, Set<string>>): BudgetRow[] {
    return budgets.filter((b) => {
      if (b.scope_kind === 'tenant') return true;
      if (b.scope_kind === 'model') return b.scope_id === model;
      // A team by its id in any case (auth's ids are UUIDs), or a team below it.
      if (b.scope_kind === 'team') {
        const team = attribution.teamId?.toLowerCase();
        const scope = b.scope_id.toLowerCase();
        return team !== undefined && (team === scope || (ancestors?.get(team)?.has(scope) ?? false));
      }
      return attribution[ATTRIBUTION[b.scope_kind]] === b.scope_id;
    });
  }

  /**
   * Of each team id (lower-cased), the teams above it in the tenant's tree (the teams projection's
   * live table); only asked when a team budget could apply. `q` runs the query (a manager inside a
   * transaction, or the data source).
   */
  static async teamAncestors(q: { query(sql: string, params: unknown[]): Promise<unknown> }, tenantId: string, budgets: BudgetRow[], teamIds: (string | undefined)[]): Promise<Map<string, Set<string>>> {
    const out = new Map<string, Set<string>>();
    const ids = [...new Set(teamIds.filter((t): t is string => !!t).map((t) => t.toLowerCase()))];
    if (!ids.length || !budgets.some((b) => b.scope_kind === 'team' && b.tenant_id === tenantId)) return out;
    const rows = (await q.query(
      `WITH RECURSIVE up(start, id) AS (
         SELECT t.id, t.parent_id FROM "${BILLING_SCHEMA}".teams t WHERE t.tenant_id = $1 AND t.id = ANY($2) AND t.parent_id IS NOT NULL
         UNION SELECT up.start, t.parent_id FROM up JOIN "${BILLING_SCHEMA}".teams t ON t.tenant_id = $1 AND t.id = up.id WHERE t.parent_id IS NOT NULL)
       SELECT start, id FROM up`,
      [tenantId, ids],
    )) as { start: string; id: string }[];
    for (const r of rows) {
      const set = out.get(r.start) ?? new Set<string>();
      set.add(r.id);
      out.set(r.start, set);
    }
    return out;
  }

  /** What `amount` (cost in USD, quantities for tokens) is in a budget's units. */
  static amountFor(b: BudgetRow, cost: Dec, quantities: Quantities): number {
    return b.unit === 'USD' ? toUnits('USD', cost) : toUnits('tokens', tokensOf(quantities));
  }

  /** The hard limit in units (the hard threshold's percent of the limit), or -1 when nothing is refused. */
  static hardLimit(b: BudgetRow): number {
    const hard = b.thresholds.find((t) => t.mode === 'hard');
    return hard ? toUnits(b.unit, new D(b.limit).times(hard.percent).div(100)) : -1;
  }

  /** Counters seen drifting at the last check (by key), so that one check's transient difference is not an alert. */
  private readonly suspected = new Set<string>();

  /**
   * Drift: each budget's counter for its current period against what the usage records in Postgres
   * add up to. A difference beyond 0.1 % of the limit (at least one unit) at two checks in a row is
   * drift: counted in `keel_billing_budgets_drifting` and logged with both figures. (A settle counts
   * on the counter a moment before its record reaches Postgres: one check's difference is expected.)
   * Answers the budgets drifting.
   */
  async measureDrift(now = Date.now()): Promise<{ tenantId: string; budgetId: string; counter: number; postgres: number }[]> {
    const budgets: BudgetRow[] = await inTenant(this.ds, ALL_TENANTS, (m) => m.query(`SELECT * FROM budgets UNION ALL SELECT * FROM plan_quotas`));
    const out: { tenantId: string; budgetId: string; counter: number; postgres: number }[] = [];
    let max = 0;
    const seen = new Set<string>();
    // Every counter first, then Postgres once the usage projection has applied what was on the log:
    // what a counter had counted is in Postgres by then (a busy budget's lag is no drift).
    const counters: { b: BudgetRow; start: number; end: number; key: string; spent: string }[] = [];
    for (const b of budgets) {
      const { start, end } = periodOf(b.period_unit, b.time_zone, now);
      const key = this.counterKey(b, start);
      const spent = await this.redisCall(this.redis.hget(key, 'spent'), 'read a budget counter');
      if (spent !== null) counters.push({ b, start, end, key, spent });
    }
    if (counters.length) await this.caughtUp();
    for (const { b, start, end, key, spent } of counters) {
      const postgres = await this.spentInPostgres(b, start, end);
      const limit = toUnits(b.unit, new D(b.limit));
      const diff = Math.abs(Number(spent) - postgres);
      max = Math.max(max, limit > 0 ? diff / limit : 0);
      if (diff <= Math.max(1, limit * 0.001)) continue;
      seen.add(key);
      if (this.suspected.has(key)) out.push({ tenantId: b.tenant_id, budgetId: b.id, counter: Number(spent), postgres });
    }
    this.suspected.clear();
    for (const k of seen) this.suspected.add(k);
    drifting.set(out.length);
    driftMax.set(max);
    driftOf.reset();
    for (const d of out) driftOf.set({ tenant_id: d.tenantId, budget_id: d.budgetId }, d.counter - d.postgres);
    return out;
  }

  /** Spent in the budget's period as Postgres has it (every usage record counted there), in units. */
  async spentInPostgres(b: BudgetRow, start: number, end: number): Promise<number> {
    const { sql, params } = spendQuery(b, start, end);
    const [row] = await inTenant(this.ds, b.tenant_id, (m) => m.query(sql, params));
    return toUnits(b.unit, new D(row.v));
  }

  private async redisCall<T>(p: Promise<T>, what: string): Promise<T> {
    try {
      return await withTimeout(p, REDIS_TIMEOUT_MS, what);
    } catch (error) {
      if (error instanceof KeelError) throw error;
      throw new RedisUnavailable(`Redis cannot ${what} now: ${(error as Error).message}`);
    }
  }

  /**
   * Reserves `amounts[i]` on each of `budgets` (all or none). Answers the holds, or the budget
   * without room (with its spent and reserved), or the reservation made before under this id.
   */
  async reserve(
    tenantId: string,
    requestId: string,
    budgets: BudgetRow[],
    amounts: number[],
    ttlMs: number,
    call: unknown,
    now = Date.now(),
  ): Promise<
    | { status: 'reserved'; holds: Hold[]; expiresAt: number }
    | { status: 'exists'; state: string; holds: Hold[]; expiresAt: number }
    | { status: 'refused'; budget: BudgetRow; spent: number; reserved: number; periodEnd: number }
  > {
    const periods = budgets.map((b) => periodOf(b.period_unit, b.time_zone, now));
    const keys = budgets.map((b, i) => this.counterKey(b, periods[i]!.start));
    const holds: Hold[] = budgets.map((b, i) => [keys[i]!, amounts[i]!, b.unit, b.id]);
    const expiresAt = now + ttlMs;
    const counterTtl = Math.max(0, ...periods.map((p) => p.end - now)) + COUNTER_GRACE_MS;
    const member = `${tenantId}\n${requestId}`;
    let seeds: (number | -1)[] = budgets.map(() => -1);
    for (let attempt = 0; attempt < 3; attempt++) {
      const args = [2 + keys.length, this.reservationKey(tenantId, requestId), this.expirySet, ...keys, member, expiresAt, FINISHED_MS + ttlMs, counterTtl, JSON.stringify(holds), JSON.stringify(call)];
      budgets.forEach((b, i) => args.push(amounts[i]!, BudgetLedger.hardLimit(b), seeds[i]!));
      const answer = await this.redisCall(this.redis.keelBudgetReserve(...args), 'reserve budget room');
      if (answer[0] === 'reserved') return { status: 'reserved', holds, expiresAt };
      if (answer[0] === 'exists') return { status: 'exists', state: answer[1]!, holds: JSON.parse(answer[2] ?? '[]'), expiresAt: Number(answer[3]) };
      if (answer[0] === 'refused') {
        const i = Number(answer[1]) - 1;
        return { status: 'refused', budget: budgets[i]!, spent: Number(answer[2]), reserved: Number(answer[3]), periodEnd: periods[i]!.end };
      }
      // Cold counters (a new period, or Redis lost them): seeded from Postgres once it has applied
      // what the log holds (a settle just made is on the log before it is in Postgres), then asked again.
      const exists = await this.redisCall(Promise.all(keys.map((k) => this.redis.exists(k))), 'look up budget counters');
      if (exists.some((e) => !e)) await this.caughtUp();
      seeds = await Promise.all(budgets.map((b, i) => (exists[i] ? -1 : this.spentInPostgres(b, periods[i]!.start, periods[i]!.end))));
    }
    throw new KeelError('service_unavailable', 'The budget counters could not be prepared; retry shortly.');
  }

  /** Ends a reservation (settled with what was used, released, or expired); once. */
  /** Adds what was used to the counters of holds whose reservation had already ended (a late settle): spend is never dropped. */
  async chargeHolds(holds: Hold[], usedMicroUsd: number, usedTokens: number): Promise<void> {
    if (!holds.length) return;
    const amounts = holds.map(([, , unit]) => (unit === 'USD' ? usedMicroUsd : usedTokens));
    await this.redisCall(this.redis.keelBudgetAddSpent(holds.length, ...holds.map(([key]) => key), ...amounts), 'count spent');
  }

  async finish(tenantId: string, requestId: string, state: 'settled' | 'released' | 'expired', usedMicroUsd: number, usedTokens: number): Promise<{ status: 'changed' | 'done' | 'missing'; state?: string }> {
    const answer = await this.redisCall(
      this.redis.keelBudgetFinish(this.reservationKey(tenantId, requestId), this.expirySet, `${tenantId}\n${requestId}`, state, usedMicroUsd, usedTokens, FINISHED_MS),
      'end the reservation',
    );
    return { status: answer[0] as 'changed' | 'done' | 'missing', ...(answer[1] ? { state: answer[1] } : {}) };
  }

  /** A reservation as Redis holds it, or undefined. */
  async reservation(tenantId: string, requestId: string): Promise<{ state: string; holds: Hold[]; expiresAt: number; call: string } | undefined> {
    const r = await this.redisCall(this.redis.hgetall(this.reservationKey(tenantId, requestId)), 'read the reservation');
    if (!r.state) return undefined;
    return { state: r.state, holds: JSON.parse(r.holds ?? '[]'), expiresAt: Number(r.expiresAt), call: r.call ?? '{}' };
  }

  /** Spent and reserved of a budget's current period: Redis's counter, else what Postgres holds (nothing reserved). */
  async current(b: BudgetRow, now = Date.now()): Promise<{ start: number; end: number; spent: number; reserved: number }> {
    const { start, end } = periodOf(b.period_unit, b.time_zone, now);
    const counter = await this.redisCall(this.redis.hgetall(this.counterKey(b, start)), 'read the budget counter').catch(() => ({}) as Record<string, string>);
    if (counter.spent !== undefined) return { start, end, spent: Number(counter.spent), reserved: Number(counter.reserved ?? 0) };
    return { start, end, spent: await this.spentInPostgres(b, start, end), reserved: 0 };
  }

  /**
   * Usage reported directly (not through a reservation), applied by the projection: added to the
   * counters of the budgets it counts against, for the period of its time. Best effort: a counter
   * Redis does not have is seeded from Postgres, which has the record, when next needed.
   */
  async addSpent(records: { tenantId: string; occurredAt: number; model: string; attribution: Attribution; cost: Dec; quantities: Quantities; sign: 1 | -1 }[]): Promise<void> {
    const byKey = new Map<string, number>();
    // Each tenant's budgets read once per call, not once per record.
    const budgets = new Map<string, Promise<{ bs: BudgetRow[]; up: Map<string, Set<string>> }>>();
    for (const r of records) {
      if (!budgets.has(r.tenantId)) {
        const rows = this.budgets(r.tenantId);
        const teams = records.filter((x) => x.tenantId === r.tenantId).map((x) => x.attribution.teamId);
        budgets.set(r.tenantId, rows.then(async (bs) => ({ bs, up: await inTenant(this.ds, r.tenantId, (m) => BudgetLedger.teamAncestors(m, r.tenantId, bs, teams)) })));
      }
      const { bs, up } = await budgets.get(r.tenantId)!;
      for (const b of BudgetLedger.applicable(bs, r.attribution, r.model, up)) {
        const key = this.counterKey(b, periodOf(b.period_unit, b.time_zone, r.occurredAt).start);
        byKey.set(key, (byKey.get(key) ?? 0) + r.sign * BudgetLedger.amountFor(b, r.cost, r.quantities));
      }
    }
    if (!byKey.size) return;
    await this.redisCall(this.redis.keelBudgetAddSpent(byKey.size, ...byKey.keys(), ...byKey.values()), 'count spent');
  }

  /** Releases reservations past their expiry (any replica may: each ends once). Answers how many it released. */
  async sweep(now = Date.now(), limit = 500): Promise<number> {
    const due = await this.redisCall(this.redis.zrangebyscore(this.expirySet, '-inf', now, 'LIMIT', 0, limit), 'list expired reservations');
    let released = 0;
    for (const member of due) {
      const [tenantId, requestId] = member.split('\n') as [string, string];
      // One that cannot be ended (a damaged reservation) does not hold up the others.
      const done = await this.finish(tenantId, requestId, 'expired', 0, 0).catch(() => ({ status: 'failed' as const }));
      if (done.status === 'changed') {
        released++;
        expired.inc();
      } else if (done.status === 'missing') {
        await this.redis.zrem(this.expirySet, member);
      }
    }
    return released;
  }
}

