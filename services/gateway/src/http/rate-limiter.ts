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
 * tenant in a hash tag. A refused request writes nothing.
 * Returns { allowed (0/1), previous, current (before this request), elapsedMs }.
 */
const CONSUME_LUA = `
if redis.replicate_commands then redis.replicate_commands() end
local windowMs = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local index = math.floor(nowMs / windowMs)
local elapsed = nowMs - index * windowMs
local currentKey = KEYS[1] .. string.format('%d', index)
local previousKey = KEYS[1] .. string.format('%d', index - 1)
local counts = redis.call('MGET', previousKey, currentKey)
local previous = tonumber(counts[1] or '0')
local current = tonumber(counts[2] or '0')
local allowed = 0
if limit >= 1 and previous * (windowMs - elapsed) + (current + 1) * windowMs <= limit * windowMs then
  allowed = 1
  if redis.call('INCR', currentKey) == 1 then
    redis.call('PEXPIRE', currentKey, 2 * windowMs)
  end
end
return { allowed, previous, current, elapsed }
`;

const COMMAND = 'keelRateLimitConsume';

type ConsumeCommand = (key: string, windowMs: number, limit: number) => Promise<[number, number, number, number]>;

/**
 * Per-tenant rate limiter shared by every gateway replica through Redis: a sliding window
 * counter (two fixed windows, the previous one weighted by how much of it still overlaps
 * the sliding window). The check-and-count is one Lua script (EVALSHA, falling back to
 * EVAL, via ioredis `defineCommand`), so N replicas together never allow more than the
 * limit. Keys: `${keyPrefix}ratelimit:${tenantId}:${windowIndex}`, expiring after two windows.
 *
 * `consume` rejects with `RateLimiterUnavailableError` when Redis cannot answer: at once
 * when the client is not connected (the gateway's client has `enableOfflineQueue: false`),
 * after one reconnect attempt if the connection drops mid-command
 * (`maxRetriesPerRequest: 1`), and after `timeoutMs` if Redis is connected but silent.
 * See `ON_STORE_UNAVAILABLE` for what to do then.
 */
export class RateLimiter {
  private readonly windowMs: number;
  private readonly timeoutMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly keyPrefix: string,
    options: { windowMs?: number; timeoutMs?: number } = {},
  ) {
    this.windowMs = options.windowMs ?? 60_000;
    this.timeoutMs = options.timeoutMs ?? 1_000;
    if (!Number.isSafeInteger(this.windowMs) || this.windowMs < 1) throw new RangeError('windowMs must be a positive integer');
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) throw new RangeError('timeoutMs must be positive');
    // Idempotent: replaces the same definition if another limiter shares this client.
    redis.defineCommand(COMMAND, { numberOfKeys: 1, lua: CONSUME_LUA });
  }

  /** Takes one request from the tenant's quota if there is room; a refusal is not counted. */
  async consume(tenantId: string, limitPerWindow: number): Promise<RateLimitDecision> {
    if (typeof tenantId !== 'string' || tenantId.length === 0) throw new TypeError('tenantId must be a non-empty string');
    if (!Number.isSafeInteger(limitPerWindow) || limitPerWindow < 0) throw new RangeError('limitPerWindow must be a non-negative integer');
    const run = (this.redis as unknown as Record<typeof COMMAND, ConsumeCommand>)[COMMAND];
    const key = `${this.keyPrefix}ratelimit:${tenantId}:`;
    let timer: NodeJS.Timeout | undefined;
    let reply: [number, number, number, number];
    try {
      reply = await Promise.race([
        run.call(this.redis, key, this.windowMs, limitPerWindow),
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
    const [allowed, previous, current, elapsedMs] = reply.map(Number) as [number, number, number, number];
    const decision = slidingWindowDecision({ previous, current, elapsedMs }, limitPerWindow, this.windowMs);
    // The same integer test on the same numbers; a disagreement is a bug, not an outage.
    if (decision.allowed !== (allowed === 1)) throw new Error('rate limiter script and slidingWindowDecision disagree');
    return decision;
  }

  /** The decision to use when the store is unavailable (see `ON_STORE_UNAVAILABLE`): allowed, nothing counted. */
  failOpen(limit: number): RateLimitDecision {
    return { allowed: true, limit, remaining: limit, resetSeconds: windowSeconds(this.windowMs), windowSeconds: windowSeconds(this.windowMs) };
  }
}
