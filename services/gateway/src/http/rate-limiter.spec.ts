import Redis from 'ioredis';
import {
  msUntilNextAllowed,
  ON_STORE_UNAVAILABLE,
  RateLimitDecision,
  rateLimitHeaders,
  RateLimiter,
  slidingWindowDecision,
  WindowState,
} from './rate-limiter';

const W = 60_000;

/** The state `ms` later with no requests in between (what the Redis keys would hold). */
function advance(s: WindowState, ms: number, windowMs: number): WindowState {
  const e = s.elapsedMs + ms;
  if (e < windowMs) return { ...s, elapsedMs: e };
  if (e < 2 * windowMs) return { previous: s.current, current: 0, elapsedMs: e - windowMs };
  return { previous: 0, current: 0, elapsedMs: e % windowMs };
}

/** Applies a decision to the state the way the script does: only an allowed request counts. */
function apply(s: WindowState, limit: number, windowMs: number): [WindowState, RateLimitDecision] {
  const d = slidingWindowDecision(s, limit, windowMs);
  return [{ ...s, current: s.current + (d.allowed ? 1 : 0) }, d];
}

/** Small deterministic PRNG (mulberry32) so the property tests are reproducible. */
function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('slidingWindowDecision', () => {
  it('allows the first request of an empty window and counts it in remaining', () => {
    expect(slidingWindowDecision({ previous: 0, current: 0, elapsedMs: 10_000 }, 600, W)).toEqual({
      allowed: true,
      limit: 600,
      remaining: 599,
      resetSeconds: 50,
      windowSeconds: 60,
    });
  });

  it('allows exactly `limit` requests at one instant, then refuses without counting', () => {
    let s: WindowState = { previous: 0, current: 0, elapsedMs: 1_234 };
    const remaining: number[] = [];
    for (let i = 0; i < 5; i++) {
      const [next, d] = apply(s, 5, W);
      expect(d.allowed).toBe(true);
      remaining.push(d.remaining);
      s = next;
    }
    expect(remaining).toEqual([4, 3, 2, 1, 0]);
    for (let i = 0; i < 10; i++) {
      const [next, d] = apply(s, 5, W);
      expect(d).toMatchObject({ allowed: false, remaining: 0 });
      expect(next).toEqual(s);
      s = next;
    }
  });

  it('weights the previous window by its overlap (the Cloudflare example: 42 × 45/60 + 18 = 49.5)', () => {
    const s = { previous: 42, current: 18, elapsedMs: 15_000 };
    // With this request the estimate is 50.5.
    expect(slidingWindowDecision(s, 50, W)).toMatchObject({ allowed: false, remaining: 0 });
    expect(slidingWindowDecision(s, 51, W)).toMatchObject({ allowed: true, remaining: 0 });
    expect(slidingWindowDecision(s, 52, W)).toMatchObject({ allowed: true, remaining: 1, resetSeconds: 45 });
  });

  it('says when the next request will fit: within the window as the previous one decays', () => {
    // previous 10, current 0, limit 10, at 0 ms: 10 + 1 > 10; 10 × (1 − t/W) ≤ 9 from t = W/10.
    const d = slidingWindowDecision({ previous: 10, current: 0, elapsedMs: 0 }, 10, W);
    expect(d).toMatchObject({ allowed: false, remaining: 0, retryAfterSeconds: 6, resetSeconds: 6 });
    expect(msUntilNextAllowed({ previous: 10, current: 0, elapsedMs: 0 }, 10, W)).toBe(6_000);
  });

  it('says when the next request will fit: in the next window when this one is full', () => {
    // current 10 = limit at 50 s: 10 s to the boundary, then 10 × (1 − e/W) ≤ 9 from e = 6 s.
    expect(msUntilNextAllowed({ previous: 3, current: 10, elapsedMs: 50_000 }, 10, W)).toBe(16_000);
    expect(slidingWindowDecision({ previous: 3, current: 10, elapsedMs: 50_000 }, 10, W).retryAfterSeconds).toBe(16);
    // A limit of 1 used up: free only when the whole next window has passed.
    expect(msUntilNextAllowed({ previous: 0, current: 1, elapsedMs: 0 }, 1, 1_000)).toBe(2_000);
  });

  it('sets reset to "until the next request fits" when the last one was just used', () => {
    const d = slidingWindowDecision({ previous: 0, current: 9, elapsedMs: 59_000 }, 10, W);
    expect(d).toMatchObject({ allowed: true, remaining: 0 });
    // 1 s to the boundary, then 10 × (1 − e/W) ≤ 9 from 6 s.
    expect(d.resetSeconds).toBe(7);
    expect(d.retryAfterSeconds).toBeUndefined();
  });

  it('never rounds the seconds down to 0', () => {
    const d = slidingWindowDecision({ previous: 0, current: 0, elapsedMs: 999 }, 5, 1_000);
    expect(d).toMatchObject({ allowed: true, resetSeconds: 1, windowSeconds: 1 });
    const refused = slidingWindowDecision({ previous: 1000, current: 0, elapsedMs: 999 }, 1, 1_000);
    expect(refused).toMatchObject({ allowed: false, retryAfterSeconds: 1, resetSeconds: 1 });
  });

  it('refuses everything with a limit of 0 and asks to retry after a window', () => {
    expect(slidingWindowDecision({ previous: 0, current: 0, elapsedMs: 0 }, 0, W)).toEqual({
      allowed: false,
      limit: 0,
      remaining: 0,
      resetSeconds: 60,
      retryAfterSeconds: 60,
      windowSeconds: 60,
    });
  });

  it('msUntilNextAllowed is exact: allowed at t, refused at t − 1 (random states)', () => {
    const random = rng(42);
    const wrong: unknown[] = [];
    for (let i = 0; i < 20_000; i++) {
      const windowMs = [1_000, 60_000, 3_600_000][i % 3]!;
      const limit = 1 + Math.floor(random() * 200);
      const s: WindowState = {
        previous: Math.floor(random() * (limit + 1)),
        current: Math.floor(random() * (limit + 1)),
        elapsedMs: Math.floor(random() * windowMs),
      };
      const t = msUntilNextAllowed(s, limit, windowMs);
      const ok =
        t >= 0 &&
        t <= 2 * windowMs &&
        slidingWindowDecision(advance(s, t, windowMs), limit, windowMs).allowed &&
        (t === 0 || !slidingWindowDecision(advance(s, t - 1, windowMs), limit, windowMs).allowed) &&
        slidingWindowDecision(s, limit, windowMs).allowed === (t === 0);
      if (!ok) wrong.push({ s, limit, windowMs, t });
    }
    expect(wrong).toEqual([]);
  });

  it('never counts more than the limit in any fixed window, nor more than twice it in any sliding one (random traffic)', () => {
    const random = rng(7);
    const windowMs = 1_000;
    const limit = 20;
    let s: WindowState = { previous: 0, current: 0, elapsedMs: 0 };
    let now = 0;
    const allowedAt: number[] = [];
    const wrong: unknown[] = [];
    for (let i = 0; i < 20_000; i++) {
      const gap = Math.floor(random() * 60);
      s = advance(s, gap, windowMs);
      now += gap;
      const [next, d] = apply(s, limit, windowMs);
      if (d.allowed) allowedAt.push(now);
      if (d.remaining < 0 || d.remaining > limit - (d.allowed ? 1 : 0) || next.current > limit) wrong.push({ s, d });
      s = next;
    }
    expect(wrong).toEqual([]);
    const perWindow = new Map<number, number>();
    for (const t of allowedAt) perWindow.set(Math.floor(t / windowMs), (perWindow.get(Math.floor(t / windowMs)) ?? 0) + 1);
    expect(Math.max(...perWindow.values())).toBeLessThanOrEqual(limit);
    let j = 0;
    let busiest = 0;
    for (let i = 0; i < allowedAt.length; i++) {
      while (allowedAt[i]! - allowedAt[j]! >= windowMs) j++;
      busiest = Math.max(busiest, i - j + 1);
    }
    expect(busiest).toBeLessThanOrEqual(2 * limit);
    expect(allowedAt.length).toBeGreaterThan(0);
  });
});

describe('rateLimitHeaders', () => {
  it('gives the draft fields for an allowed request, without Retry-After', () => {
    expect(rateLimitHeaders({ allowed: true, limit: 600, remaining: 599, resetSeconds: 42, windowSeconds: 60 })).toEqual({
      'RateLimit-Limit': '600',
      'RateLimit-Remaining': '599',
      'RateLimit-Reset': '42',
      'RateLimit-Policy': '600;w=60',
    });
  });

  it('adds Retry-After for a refused request', () => {
    const d = slidingWindowDecision({ previous: 0, current: 600, elapsedMs: 30_000 }, 600, W);
    expect(rateLimitHeaders(d)).toEqual({
      'RateLimit-Limit': '600',
      'RateLimit-Remaining': '0',
      'RateLimit-Reset': String(d.retryAfterSeconds),
      'RateLimit-Policy': '600;w=60',
      'Retry-After': String(d.retryAfterSeconds),
    });
    expect(d.retryAfterSeconds).toBe(31); // 30 s to the boundary, then 600 × (1 − e/W) ≤ 599 from e = 100 ms
  });
});

describe('RateLimiter (no connection)', () => {
  // lazyConnect: nothing is sent, so nothing connects; only argument checks and failOpen run.
  const redis = new Redis({ lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1 });
  afterAll(() => redis.disconnect());

  it('rejects bad options and arguments as bugs, not as an unavailable store', async () => {
    expect(() => new RateLimiter(redis, 'p:', { windowMs: 0 })).toThrow(RangeError);
    expect(() => new RateLimiter(redis, 'p:', { windowMs: 1.5 })).toThrow(RangeError);
    const limiter = new RateLimiter(redis, 'p:');
    await expect(limiter.consume('', 10)).rejects.toThrow(TypeError);
    await expect(limiter.consume('t', -1)).rejects.toThrow(RangeError);
    await expect(limiter.consume('t', 2.5)).rejects.toThrow(RangeError);
    expect(redis.status).toBe('wait');
  });

  it('fails open with an allowed, uncounted decision', () => {
    expect(ON_STORE_UNAVAILABLE).toBe('fail-open');
    expect(new RateLimiter(redis, 'p:').failOpen(600)).toEqual({ allowed: true, limit: 600, remaining: 600, resetSeconds: 60, windowSeconds: 60 });
    expect(new RateLimiter(redis, 'p:', { windowMs: 1_000 }).failOpen(5)).toMatchObject({ allowed: true, windowSeconds: 1 });
  });
});
