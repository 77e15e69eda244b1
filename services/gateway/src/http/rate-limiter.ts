import Redis from 'ioredis';

/** What one `consume` decided, in the terms of the IETF RateLimit header fields draft. */
export interface RateLimitDecision {
  allowed: boolean;
  /** Requests per window (the tenant's quota). */
  limit: number;
  /** Requests still allowed now, after this one if it was allowed. */
  remaining: number;
  /**
   * Seconds until the quota is no longer exhausted: while `remaining > 0`, until the
   * current fixed window ends (its count then starts decaying); once `remaining` is 0,
   * until at least one more request would be allowed. At least 1.
   */
  resetSeconds: number;
  /** Only on a refusal: seconds until one request would be allowed (absent other traffic). At least 1. */
  retryAfterSeconds?: number;
  /** The window length in seconds, for `RateLimit-Policy`. */
  windowSeconds: number;
}

/** The counters of one tenant at one instant: the previous and current fixed windows. */
export interface WindowState {
  previous: number;
  current: number;
  /** Milliseconds since the current fixed window began, 0 ≤ elapsedMs < windowMs. */
  elapsedMs: number;
}

/** Raised when Redis cannot answer (unreachable, not ready, or slower than `timeoutMs`). */
export class RateLimiterUnavailableError extends Error {
  override readonly name = 'RateLimiterUnavailableError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * What the gateway does when the limiter's store is unavailable: FAIL OPEN. Redis only
 * holds rebuildable state (ARCHITECTURE §5), and refusing every tenant because the
 * limiter's store is down would turn a Redis outage into a full API outage; the limiter
 * protects capacity, it is not an authorization check. So on a
 * `RateLimiterUnavailableError` the guard logs a warning (rate-limited by the caller,
 * not per request) and lets the request through with `limiter.failOpen(limit)`.
 * Any other error (a bad argument) is a bug and should propagate as a 500.
 */
export const ON_STORE_UNAVAILABLE = 'fail-open' as const;

/**
 * The sliding-window-counter decision (the weighted two-fixed-windows approximation):
 * estimate = previous × (1 − elapsed/window) + current, and a request is allowed, and
 * counted, only if estimate + 1 ≤ limit. Integer arithmetic scaled by the window so it
 * matches the Lua script exactly: previous × (W − elapsed) + (current + 1) × W ≤ limit × W.
 * `state` is the state before the request. Pure; the script is the authoritative copy
 * of the allow test, this computes the same verdict plus what the headers need.
 */
export function slidingWindowDecision(state: WindowState, limit: number, windowMs: number): RateLimitDecision {
  const { previous, elapsedMs } = state;
  const W = windowMs;
  const allowed = limit >= 1 && previous * (W - elapsedMs) + (state.current + 1) * W <= limit * W;
  const current = state.current + (allowed ? 1 : 0);
  const remaining = Math.max(0, Math.floor((limit * W - previous * (W - elapsedMs) - current * W) / W));
  const resetMs = remaining > 0 ? W - elapsedMs : msUntilNextAllowed({ previous, current, elapsedMs }, limit, W);
  const resetSeconds = Math.max(1, Math.ceil(resetMs / 1000));
  return {
    allowed,
    limit,
    remaining,
    resetSeconds,
    ...(allowed ? {} : { retryAfterSeconds: resetSeconds }),
    windowSeconds: windowSeconds(W),
  };
}

/**
 * Milliseconds from `state` until a request would be allowed if no other request came
 * in the meantime (the smallest such integer). Exported for the unit tests.
 */
export function msUntilNextAllowed(state: WindowState, limit: number, windowMs: number): number {
  const { previous, current, elapsedMs } = state;
  const W = windowMs;
  // A limit of 0 refuses everything; say "one window" rather than "never".
  if (limit < 1) return W;
  if (previous * (W - elapsedMs) + (current + 1) * W <= limit * W) return 0;
  if (current + 1 <= limit) {
    // Still in this window, as `previous`'s weight decays: previous × (W − e − t) ≤ (limit − 1 − current) × W.
    // (previous > 0 here, else the request would already be allowed.)
    return W - elapsedMs - Math.floor(((limit - 1 - current) * W) / previous);
  }
  // Not in this window: in the next, `current` becomes the decaying previous and the new
  // current is 0: current × (W − e') ≤ (limit − 1) × W.
  return W - elapsedMs + W - Math.floor(((limit - 1) * W) / current);
}

/**
 * The IETF draft RateLimit header fields (draft-ietf-httpapi-ratelimit-headers, the
 * separate-fields form), plus `Retry-After` on a refusal.
 */
export function rateLimitHeaders(d: RateLimitDecision): Record<string, string> {
  return {
    'RateLimit-Limit': String(d.limit),
    'RateLimit-Remaining': String(d.remaining),
    'RateLimit-Reset': String(d.resetSeconds),
    'RateLimit-Policy': `${d.limit};w=${d.windowSeconds}`,
    ...(!d.allowed && d.retryAfterSeconds !== undefined ? { 'Retry-After': String(d.retryAfterSeconds) } : {}),
  };
}

function windowSeconds(windowMs: number): number {
  return Math.max(1, Math.round(windowMs / 1000));
}

/**
 * Reads both windows, decides and counts in one atomic step, on Redis's clock (TIME) so
 * replicas with skewed clocks agree on the window. KEYS[1] is the tenant's key base; the
 * window keys are derived from it here because the window index comes from the server's
 * clock. That is fine on the one standalone Redis Keel uses; Redis Cluster would need the
 * tenant in a hash tag. ARGV[3] is how many requests the caller wants at once (1, or a lease:
 * see `RateLimiter`); it gets as many as still fit, at least one or none. The room is the
 * integer form of the allow test: previous × (W − elapsed) + (current + n) × W ≤ limit × W.
 * A refusal writes nothing.
 * Returns { granted (0 … want), previous, current (before this call), elapsedMs, window index }.
 */
const CONSUME_LUA = `
if redis.replicate_commands then redis.replicate_commands() end
local windowMs = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local index = math.floor(nowMs / windowMs)
local elapsed = nowMs - index * windowMs
local currentKey = KEYS[1] .. string.format('%d', index)
local previousKey = KEYS[1] .. string.format('%d', index - 1)
local counts = redis.call('MGET', previousKey, currentKey)
local previous = tonumber(counts[1] or '0')
local current = tonumber(counts[2] or '0')
local granted = 0
if limit >= 1 then
  local room = math.floor((limit * windowMs - previous * (windowMs - elapsed)) / windowMs) - current
  if room >= 1 then
    granted = math.min(want, room)
    if redis.call('INCRBY', currentKey, granted) == granted then
      redis.call('PEXPIRE', currentKey, 2 * windowMs)
    end
  end
end
return { granted, previous, current, elapsed, index }
`;

const COMMAND = 'keelRateLimitConsume';

type ConsumeCommand = (key: string, windowMs: number, limit: number, want: number) => Promise<number[]>;
type Taken = { granted: number; previous: number; current: number; elapsedMs: number; window: number };

/** Requests a gateway holds for one key: taken from the shared window in Redis in one step. */
interface Lease {
  limit: number;
  /** The Redis window the requests were counted in, and when it ends on this gateway's clock. */
  window: number;
  endsAt: number;
  left: number;
  /** The window's state in Redis after the last grant: previous, current (every grant included), elapsed then, and when (local ms). */
  previous: number;
  current: number;
  elapsedMs: number;
  at: number;
  /** When the window had no room: refused here until then (ms), without asking Redis. */
  blockedUntil: number;
}

/** Tuning of the leases; a field so that tests can choose. */
export interface LeaseOptions {
  /** Limits below this (per window) are counted in Redis request by request: exact remaining counts, no lease. */
  from: number;
  /** A lease is this share of the limit (the default, 1/600 of a minute's quota, is 0.1 s of traffic at the full rate) … */
  share: number;
  /** … and at most this many requests. */
  max: number;
  /** Keys with a lease kept at once (the least recently leased go first). */
  maxKeys: number;
}

const DEFAULT_LEASES: LeaseOptions = { from: 6_000, share: 1 / 600, max: 1_000, maxKeys: 10_000 };

/**
 * Per-tenant rate limiter shared by every gateway replica through Redis: a sliding window
 * counter (two fixed windows, the previous one weighted by how much of it still overlaps
 * the sliding window). The check-and-count is one Lua script (EVALSHA, falling back to
 * EVAL, via ioredis `defineCommand`), so N replicas together never allow more than the
 * limit. Keys: `${keyPrefix}ratelimit:${tenantId}:${windowIndex}`, expiring after two windows.
 *
 * Small limits (below `leases.from` per window: the starter plan's 600 a minute, the per-address
 * limit of public routes) are counted request by request, one script call each. A large limit
 * is served from leases, the way a token-bucket proxy takes tokens from its shared store in
 * batches: the gateway takes `share × limit` requests (at most `max`) in one script call, serves
 * them from memory, and takes the next lease in the background when half is used, so a busy
 * tenant costs Redis a call per lease instead of per request. A leased request is counted in
 * Redis before it is served, so all replicas together still never allow more than the limit;
 * what a lease costs is exactness the other way: requests a replica holds and does not use
 * before its window ends are counted and lost, so a tenant may be refused up to one lease per
 * replica before its limit (at most 0.17 % of it per replica by default). A lease belongs to
 * its window: what is left of it when the window ends is dropped. When the window has no
 * room, the replica refuses the key locally until the time the script's state says a request
 * would fit (absent other traffic, so never too early). `RateLimit-Remaining` then counts the
 * shared window's room at the last grant plus what this replica still holds.
 *
 * `consume` rejects with `RateLimiterUnavailableError` when Redis cannot answer: at once
 * when the client is not connected (the gateway's client has `enableOfflineQueue: false`),
 * after one reconnect attempt if the connection drops mid-command
 * (`maxRetriesPerRequest: 1`), and after `timeoutMs` if Redis is connected but silent.
 * A lease taken before goes on serving until it is used up. See `ON_STORE_UNAVAILABLE` for
 * what to do then.
 */
export class RateLimiter {
  private readonly windowMs: number;
  private readonly timeoutMs: number;
  private readonly leases = new Map<string, Lease>();
  private readonly fetching = new Map<string, Promise<void>>();
  readonly leaseOptions: LeaseOptions;

  constructor(
    private readonly redis: Redis,
    private readonly keyPrefix: string,
    options: { windowMs?: number; timeoutMs?: number; leases?: Partial<LeaseOptions> } = {},
  ) {
    this.windowMs = options.windowMs ?? 60_000;
    this.timeoutMs = options.timeoutMs ?? 1_000;
    this.leaseOptions = { ...DEFAULT_LEASES, ...options.leases };
    if (!Number.isSafeInteger(this.windowMs) || this.windowMs < 1) throw new RangeError('windowMs must be a positive integer');
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) throw new RangeError('timeoutMs must be positive');
    // Idempotent: replaces the same definition if another limiter shares this client.
    redis.defineCommand(COMMAND, { numberOfKeys: 1, lua: CONSUME_LUA });
  }

  /** How many requests one script call takes for this limit: 1 below `leases.from`. */
  leaseSize(limitPerWindow: number): number {
    const o = this.leaseOptions;
    if (limitPerWindow < o.from) return 1;
    return Math.max(1, Math.min(o.max, Math.floor(limitPerWindow * o.share)));
  }

  /** Takes one request from the tenant's quota if there is room; a refusal is not counted. */
  async consume(tenantId: string, limitPerWindow: number): Promise<RateLimitDecision> {
    if (typeof tenantId !== 'string' || tenantId.length === 0) throw new TypeError('tenantId must be a non-empty string');
    if (!Number.isSafeInteger(limitPerWindow) || limitPerWindow < 0) throw new RangeError('limitPerWindow must be a non-negative integer');
    const size = this.leaseSize(limitPerWindow);
    // Each round either serves, refuses, or waits for a lease; a lease that concurrent requests
    // used up before this one got its turn is followed by another, a few times, then by an exact take.
    for (let round = 0; size > 1 && round < 4; round++) {
      const decided = this.consumeNow(tenantId, limitPerWindow);
      if (decided) return decided;
      // A background fetch that failed rejects here too: the caller hears that Redis is away.
      await (this.fetching.get(tenantId) ?? this.fetch(tenantId, limitPerWindow, size));
    }
    const t = await this.take(tenantId, limitPerWindow, 1);
    const decision = slidingWindowDecision(t, limitPerWindow, this.windowMs);
    // The same integer test on the same numbers; a disagreement is a bug, not an outage.
    if (decision.allowed !== (t.granted === 1)) throw new Error('rate limiter script and slidingWindowDecision disagree');
    return decision;
  }

  /**
   * `consume`'s decision when this replica can take it alone, at once: a request served from a
   * lease with room (a refill is fetched in the background at half), or refused while the window is
   * known to be full. Undefined when it needs Redis (no lease, or an exact limit): then `consume`.
   * Arguments are `consume`'s, unchecked.
   */
  consumeNow(tenantId: string, limitPerWindow: number): RateLimitDecision | undefined {
    const size = this.leaseSize(limitPerWindow);
    if (size <= 1) return undefined;
    const now = Date.now();
    const lease = this.leases.get(tenantId);
    if (!lease || lease.limit !== limitPerWindow || now >= lease.endsAt) return undefined;
    if (lease.left > 0) {
      lease.left--;
      if (lease.left < size / 2 && !this.fetching.has(tenantId)) this.fetch(tenantId, limitPerWindow, size).catch(() => undefined);
      return this.leased(lease, now);
    }
    if (now < lease.blockedUntil) return this.refused(lease, now);
    return undefined;
  }

  /** The decision to use when the store is unavailable (see `ON_STORE_UNAVAILABLE`): allowed, nothing counted. */
  failOpen(limit: number): RateLimitDecision {
    return { allowed: true, limit, remaining: limit, resetSeconds: windowSeconds(this.windowMs), windowSeconds: windowSeconds(this.windowMs) };
  }

  /** Takes a lease: added to the key's when it is of the same window, replacing it otherwise (what is left of an older window is dropped). */
  private fetch(key: string, limit: number, size: number): Promise<void> {
    const run = (async () => {
      try {
        // The window's end on this clock, counted from before the call: never later than Redis's.
        const sent = Date.now();
        const t = await this.take(key, limit, size);
        const at = Date.now();
        const held = this.leases.get(key);
        const lease: Lease =
          held && held.limit === limit && held.window === t.window
            ? held
            : { limit, window: t.window, endsAt: sent + this.windowMs - t.elapsedMs, left: 0, previous: 0, current: 0, elapsedMs: 0, at, blockedUntil: 0 };
        lease.left += t.granted;
        lease.previous = t.previous;
        lease.current = t.current + t.granted;
        lease.elapsedMs = t.elapsedMs;
        lease.at = at;
        lease.blockedUntil = t.granted > 0 ? 0 : at + Math.max(1, msUntilNextAllowed(t, limit, this.windowMs));
        this.leases.delete(key);
        this.leases.set(key, lease);
        if (this.leases.size > this.leaseOptions.maxKeys) this.leases.delete(this.leases.keys().next().value!);
      } finally {
        this.fetching.delete(key);
      }
    })();
    this.fetching.set(key, run);
    return run;
  }

  /** A request served from a lease: the shared window's room at the last grant plus what is held here. */
  private leased(lease: Lease, now: number): RateLimitDecision {
    const W = this.windowMs;
    const elapsed = Math.min(W - 1, lease.elapsedMs + (now - lease.at));
    const room = Math.max(0, Math.floor((lease.limit * W - lease.previous * (W - elapsed) - lease.current * W) / W));
    return {
      allowed: true,
      limit: lease.limit,
      remaining: room + lease.left,
      resetSeconds: Math.max(1, Math.ceil((lease.endsAt - now) / 1000)),
      windowSeconds: windowSeconds(W),
    };
  }

  private refused(lease: Lease, now: number): RateLimitDecision {
    const retry = Math.max(1, Math.ceil((lease.blockedUntil - now) / 1000));
    return { allowed: false, limit: lease.limit, remaining: 0, resetSeconds: retry, retryAfterSeconds: retry, windowSeconds: windowSeconds(this.windowMs) };
  }

  private async take(key: string, limit: number, want: number): Promise<Taken> {
    const run = (this.redis as unknown as Record<typeof COMMAND, ConsumeCommand>)[COMMAND];
    let timer: NodeJS.Timeout | undefined;
    let reply: number[];
    try {
      reply = await Promise.race([
        run.call(this.redis, `${this.keyPrefix}ratelimit:${key}:`, this.windowMs, limit, want),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new RateLimiterUnavailableError(`Redis did not answer within ${this.timeoutMs} ms`)), this.timeoutMs);
        }),
      ]);
    } catch (error) {
      if (error instanceof RateLimiterUnavailableError) throw error;
      throw new RateLimiterUnavailableError(`Rate limit store unavailable: ${(error as Error)?.message ?? String(error)}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
    const [granted, previous, current, elapsedMs, window] = reply.map(Number) as [number, number, number, number, number];
    return { granted, previous, current, elapsedMs, window };
  }
}
