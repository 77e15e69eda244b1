import Redis, { RedisOptions } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { AddressInfo, createServer, Server, Socket } from 'node:net';
import { testRunId } from '@keel/testing';
import { RateLimitDecision, rateLimitHeaders, RateLimiter, RateLimiterUnavailableError } from '../src/http/rate-limiter';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
/** The options the gateway's own client uses (app.module.ts). */
const GATEWAY_OPTIONS: RedisOptions = { maxRetriesPerRequest: 1, enableOfflineQueue: false };
/**
 * For the clients of dead or silent servers: shortens the 2 s ioredis waits in disconnect()
 * for a socket that does not report closing (which kept jest alive after the run). It plays
 * no part in how commands fail.
 */
const QUICK_DISCONNECT: RedisOptions = { disconnectTimeout: 50 };

/** Per test: a hang fails fast instead of at the 5-minute default. */
const TIMEOUT = 15_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A client with the gateway's options, once it can take commands (before that it refuses them). */
async function gatewayClient(): Promise<Redis> {
  const redis = new Redis(REDIS_URL, GATEWAY_OPTIONS);
  await new Promise<void>((resolve, reject) => {
    redis.once('ready', resolve);
    redis.once('error', reject);
  });
  return redis;
}

/** The per-tenant rate limiter against the real Redis, with two clients standing in for two gateways. */
describe('RateLimiter (real Redis)', () => {
  // Under keel:test:<run>_ so the run's global teardown also removes anything left behind.
  const prefix = `keel:test:${testRunId()}_rl_${randomBytes(4).toString('hex')}:`;
  let gatewayA: Redis;
  let gatewayB: Redis;
  const clients: Redis[] = [];
  const servers: Server[] = [];

  const tenant = (label: string) => `${label}-${randomBytes(3).toString('hex')}`;
  const keysOf = async (tenantId: string) => (await gatewayA.keys(`${prefix}ratelimit:${tenantId}:*`)).sort();
  const counted = async (tenantId: string) => {
    const keys = await keysOf(tenantId);
    return keys.length ? (await gatewayA.mget(...keys)).reduce((sum, v) => sum + Number(v ?? 0), 0) : 0;
  };

  beforeAll(async () => {
    gatewayA = await gatewayClient();
    gatewayB = await gatewayClient();
  });

  afterAll(async () => {
    let cursor = '0';
    do {
      const [next, keys] = await gatewayA.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      if (keys.length) await gatewayA.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    expect(await gatewayA.keys(`${prefix}*`)).toEqual([]);
    for (const c of [gatewayA, gatewayB, ...clients]) c?.disconnect();
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });

  it('lets exactly `limit` of 3 × limit concurrent requests from two gateways through, and counts only those', async () => {
    const a = new RateLimiter(gatewayA, prefix);
    const b = new RateLimiter(gatewayB, prefix);
    const id = tenant('burst');
    const decisions = await Promise.all(Array.from({ length: 150 }, (_, i) => (i % 2 ? a : b).consume(id, 50)));
    const allowed = decisions.filter((d) => d.allowed);
    const refused = decisions.filter((d) => !d.allowed);
    expect(allowed).toHaveLength(50);
    expect(refused).toHaveLength(100);
    // Each allowed request saw a distinct remaining count: 49 … 0.
    expect(allowed.map((d) => d.remaining).sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    for (const d of refused) {
      expect(d).toMatchObject({ limit: 50, remaining: 0 });
      expect(d.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    }
    expect(await counted(id)).toBe(50);
    // Still full, from either gateway.
    expect((await a.consume(id, 50)).allowed).toBe(false);
    expect((await b.consume(id, 50)).allowed).toBe(false);
    expect(await counted(id)).toBe(50);
  }, TIMEOUT);

  it('keeps tenants independent', async () => {
    const limiter = new RateLimiter(gatewayA, prefix);
    const busy = tenant('busy');
    const quiet = tenant('quiet');
    for (let i = 0; i < 3; i++) expect((await limiter.consume(busy, 3)).allowed).toBe(true);
    expect((await limiter.consume(busy, 3)).allowed).toBe(false);
    expect(await limiter.consume(quiet, 3)).toMatchObject({ allowed: true, remaining: 2 });
    expect((await limiter.consume(busy, 3)).allowed).toBe(false);
  }, TIMEOUT);

  it('counts remaining down, then refuses with Retry-After', async () => {
    const limiter = new RateLimiter(gatewayB, prefix);
    const id = tenant('countdown');
    const seen: RateLimitDecision[] = [];
    for (let i = 0; i < 6; i++) seen.push(await limiter.consume(id, 5));
    expect(seen.map((d) => [d.allowed, d.remaining])).toEqual([
      [true, 4],
      [true, 3],
      [true, 2],
      [true, 1],
      [true, 0],
      [false, 0],
    ]);
    const refused = seen[5]!;
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterSeconds).toBeLessThanOrEqual(120);
    expect(rateLimitHeaders(refused)).toEqual({
      'RateLimit-Limit': '5',
      'RateLimit-Remaining': '0',
      'RateLimit-Reset': String(refused.retryAfterSeconds),
      'RateLimit-Policy': '5;w=60',
      'Retry-After': String(refused.retryAfterSeconds),
    });
    expect(rateLimitHeaders(seen[0]!)).not.toHaveProperty('Retry-After');
  }, TIMEOUT);

  it('keys the window by tenant and Redis-clock window index, expiring after two windows', async () => {
    const windowMs = 60_000;
    const limiter = new RateLimiter(gatewayA, prefix, { windowMs });
    const id = tenant('keys');
    const serverMs = async () => {
      const [s, us] = await gatewayA.time();
      return Number(s) * 1000 + Math.floor(Number(us) / 1000);
    };
    const before = Math.floor((await serverMs()) / windowMs);
    await limiter.consume(id, 10);
    const after = Math.floor((await serverMs()) / windowMs);
    const keys = await keysOf(id);
    expect(keys).toHaveLength(1);
    const index = Number(keys[0]!.slice(`${prefix}ratelimit:${id}:`.length));
    expect([before, after]).toContain(index);
    const ttl = await gatewayA.pttl(keys[0]!);
    expect(ttl).toBeGreaterThan(2 * windowMs - 5_000);
    expect(ttl).toBeLessThanOrEqual(2 * windowMs);
  }, TIMEOUT);

  it('allows requests again once the window has passed', async () => {
    const limiter = new RateLimiter(gatewayA, prefix, { windowMs: 1_000 });
    const id = tenant('window');
    for (let i = 0; i < 3; i++) expect((await limiter.consume(id, 3)).allowed).toBe(true);
    const refused = await limiter.consume(id, 3);
    expect(refused.allowed).toBe(false);
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterSeconds).toBeLessThanOrEqual(2);
    // Honouring Retry-After is enough for the next request (a little slack for timer jitter).
    await sleep(refused.retryAfterSeconds! * 1000 + 50);
    expect((await limiter.consume(id, 3)).allowed).toBe(true);
    // Two quiet windows later, the whole quota is back.
    await sleep(2_050);
    const again: boolean[] = [];
    for (let i = 0; i < 4; i++) again.push((await limiter.consume(id, 3)).allowed);
    expect(again).toEqual([true, true, true, false]);
  }, TIMEOUT);

  describe('leases (limits from leases.from up)', () => {
    const serverMs = async () => {
      const [sec, us] = await gatewayA.time();
      return Number(sec) * 1000 + Math.floor(Number(us) / 1000);
    };

    // An hour's window: the counts below are of one window, and a minute's boundary would fall inside a test now and then.
    const HOUR = 3_600_000;

    it('takes a lease per script call, counted in Redis before any of it is served, and counts remaining down exactly', async () => {
      const limiter = new RateLimiter(gatewayA, prefix, { windowMs: HOUR });
      expect(limiter.leaseSize(5_999)).toBe(1);
      expect(limiter.leaseSize(60_000)).toBe(100);
      expect(limiter.leaseSize(10_000_000)).toBe(1_000);
      const id = tenant('lease');
      const first = await limiter.consume(id, 60_000);
      expect(first).toMatchObject({ allowed: true, limit: 60_000, remaining: 59_999 });
      expect(await counted(id)).toBe(100);
      const seen = [first];
      for (let i = 0; i < 49; i++) seen.push(await limiter.consume(id, 60_000));
      // Half the lease served from memory: no further call, the same count in Redis.
      expect(await counted(id)).toBe(100);
      expect(seen.map((d) => d.remaining)).toEqual(Array.from({ length: 50 }, (_, i) => 59_999 - i));
      // Past half, the next lease is taken in the background; the requests go on being served.
      for (let i = 0; i < 100; i++) expect((await limiter.consume(id, 60_000)).allowed).toBe(true);
      expect(await counted(id)).toBeGreaterThanOrEqual(200);
      expect(await counted(id)).toBeLessThanOrEqual(300);
    }, TIMEOUT);

    it('decides at once (consumeNow) only from a lease of the same limit: never an exact limit, never without a lease', async () => {
      const limiter = new RateLimiter(gatewayA, prefix, { windowMs: HOUR });
      const id = tenant('now');
      expect(limiter.consumeNow(id, 60_000)).toBeUndefined();
      expect(await counted(id)).toBe(0);
      await limiter.consume(id, 60_000);
      const now = limiter.consumeNow(id, 60_000);
      expect(now).toMatchObject({ allowed: true, limit: 60_000, remaining: 59_998 });
      // Another limit (a plan change) is not this lease's: Redis is asked again.
      expect(limiter.consumeNow(id, 120_000)).toBeUndefined();
      // Below the lease threshold every request is counted in Redis.
      const exact = tenant('now-exact');
      await limiter.consume(exact, 100);
      expect(limiter.consumeNow(exact, 100)).toBeUndefined();
      expect(await counted(exact)).toBe(1);
      // consumeNow took from the lease only: Redis still holds the one lease of 100.
      expect(await counted(id)).toBe(100);
    }, TIMEOUT);

    it('never lets two gateways together allow more than the limit, and holds at most two leases each when demand outruns it', async () => {
      const a = new RateLimiter(gatewayA, prefix, { windowMs: HOUR });
      const b = new RateLimiter(gatewayB, prefix, { windowMs: HOUR });
      const id = tenant('lease-burst');
      const limit = 6_000;
      const size = a.leaseSize(limit);
      expect(size).toBe(10);
      const decisions = await Promise.all(Array.from({ length: 9_000 }, (_, i) => (i % 2 ? a : b).consume(id, limit)));
      const allowed = decisions.filter((d) => d.allowed).length;
      expect(await counted(id)).toBe(limit);
      expect(allowed).toBeLessThanOrEqual(limit);
      expect(allowed).toBeGreaterThanOrEqual(limit - 2 * 2 * size);
      for (const d of decisions.filter((x) => !x.allowed)) expect(d.retryAfterSeconds).toBeGreaterThanOrEqual(1);
      // What a gateway still holds is served, then it refuses from memory: in all, exactly the limit, nothing more counted.
      let held = 0;
      for (const g of [a, b]) while ((await g.consume(id, limit)).allowed) held++;
      expect(held).toBeLessThanOrEqual(2 * size);
      expect(allowed + held).toBe(limit);
      expect((await a.consume(id, limit)).allowed).toBe(false);
      expect((await b.consume(id, limit)).allowed).toBe(false);
      expect(await counted(id)).toBe(limit);
    }, 30_000);

    it('drops what is left of a lease when its window ends and takes the next from the new window', async () => {
      const windowMs = 1_000;
      const limiter = new RateLimiter(gatewayA, prefix, { windowMs });
      const id = tenant('lease-window');
      const limit = 60_000;
      // Start early in a window, so that the lease is taken within it.
      while ((await serverMs()) % windowMs > 300) await sleep(20);
      const index = Math.floor((await serverMs()) / windowMs);
      await limiter.consume(id, limit);
      const keys = await keysOf(id);
      expect(keys).toHaveLength(1);
      expect(await gatewayA.get(keys[0]!)).toBe('100');
      while (Math.floor((await serverMs()) / windowMs) <= index) await sleep(20);
      const next = await limiter.consume(id, limit);
      expect(next.allowed).toBe(true);
      const after = await keysOf(id);
      expect(after).toHaveLength(2);
      // A new lease of the new window; the old window's count stays as it was.
      expect((await gatewayA.mget(...after)).map(Number).sort((x, y) => x - y)).toEqual([100, 100]);
    }, TIMEOUT);

    it('serves from a lease already held while Redis is away, then reports the store unavailable', async () => {
      const redis = await gatewayClient();
      clients.push(redis);
      const limiter = new RateLimiter(redis, prefix, { windowMs: HOUR });
      const id = tenant('lease-outage');
      expect((await limiter.consume(id, 6_000)).allowed).toBe(true);
      redis.disconnect();
      // 9 left of the lease of 10; the background refill fails quietly.
      for (let i = 0; i < 9; i++) expect((await limiter.consume(id, 6_000)).allowed).toBe(true);
      await expect(limiter.consume(id, 6_000)).rejects.toBeInstanceOf(RateLimiterUnavailableError);
    }, TIMEOUT);
  });

  it('rejects within 2 s when Redis is unreachable, so the gateway can fail open', async () => {
    const down = new Redis('redis://127.0.0.1:1', { ...GATEWAY_OPTIONS, ...QUICK_DISCONNECT });
    down.on('error', () => undefined);
    clients.push(down);
    const limiter = new RateLimiter(down, prefix);
    for (const wait of [0, 300]) {
      await sleep(wait); // at once, and after a failed connection attempt
      const started = Date.now();
      await expect(limiter.consume(tenant('down'), 10)).rejects.toBeInstanceOf(RateLimiterUnavailableError);
      expect(Date.now() - started).toBeLessThan(2_000);
    }
    // What the guard does with it (ON_STORE_UNAVAILABLE = 'fail-open').
    const decision = await limiter.consume(tenant('down'), 10).catch((e) => {
      if (e instanceof RateLimiterUnavailableError) return limiter.failOpen(10);
      throw e;
    });
    expect(decision).toMatchObject({ allowed: true, limit: 10 });
  }, TIMEOUT);

  it('rejects after timeoutMs when Redis accepts the connection but never answers', async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    servers.push(silent);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    silent.unref();
    const url = `redis://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      // With the gateway's options the ready check never completes, so commands are refused at once.
      const unready = new Redis(url, { ...GATEWAY_OPTIONS, ...QUICK_DISCONNECT });
      unready.on('error', () => undefined);
      clients.push(unready);
      await sleep(100);
      let started = Date.now();
      await expect(new RateLimiter(unready, prefix).consume('t', 10)).rejects.toBeInstanceOf(RateLimiterUnavailableError);
      expect(Date.now() - started).toBeLessThan(2_000);
      // Without a ready check (nor the CLIENT SETINFO handshake, which also waits for replies)
      // the client is "ready" and the command is written and never answered: timeoutMs bounds it.
      const hung = new Redis(url, { ...GATEWAY_OPTIONS, ...QUICK_DISCONNECT, enableReadyCheck: false, disableClientInfo: true });
      hung.on('error', () => undefined);
      clients.push(hung);
      await new Promise((r) => hung.once('ready', r));
      started = Date.now();
      await expect(new RateLimiter(hung, prefix, { timeoutMs: 300 }).consume('t', 10)).rejects.toThrow(/did not answer within 300 ms/);
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      for (const c of clients.splice(0)) c.disconnect();
      for (const s of sockets) s.destroy();
    }
  }, TIMEOUT);
});
