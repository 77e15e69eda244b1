import Fastify, { FastifyInstance } from 'fastify';
import Redis from 'ioredis';
import { randomBytes } from 'node:crypto';
import { AddressInfo, createServer } from 'node:net';
import { allRoutes, RouteDecl } from '@keel/contracts';
import { createLogger } from '@keel/observability';
import { testRunId } from '@keel/testing';
import { clientKey, limitedPublicRoutes, registerPublicRateLimit } from '../src/http/public-rate-limit';
import { RateLimiter } from '../src/http/rate-limiter';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const logger = createLogger('public-rate-limit-test', 'silent');

const decl = (over: Partial<RouteDecl>) => ({ method: 'POST', path: '/login', permission: 'public', operationId: 'auth.login', ...over }) as RouteDecl;

describe('clientKey', () => {
  it.each([
    ['203.0.113.7', '203.0.113.7'],
    ['::ffff:203.0.113.7', '203.0.113.7'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:db8:1:2::9', '2001:db8:1:2::/64'],
    ['2001:0db8:0001:0002:ffff::', '2001:db8:1:2::/64'],
    ['::1', '0:0:0:0::/64'],
    [undefined, 'unknown'],
  ])('counts %s as %s', (ip, key) => {
    expect(clientKey(ip)).toBe(key);
  });
});

describe('limitedPublicRoutes', () => {
  it('limits the public routes that do work (sign-in, refresh, SSO), not documents, probes or authenticated routes', () => {
    const limited = limitedPublicRoutes(allRoutes());
    expect([...limited].sort()).toEqual(
      ['GET /api/v1/auth/sso/:tenantSlug/:providerId/start', 'GET /api/v1/auth/sso/callback', 'POST /api/v1/auth/login', 'POST /api/v1/auth/refresh'].sort(),
    );
  });
});

/** The hook on a real Fastify with the real limiter in Redis. */
describe('registerPublicRateLimit (real Redis)', () => {
  const prefix = `keel:test:${testRunId()}_prl_${randomBytes(4).toString('hex')}:public:`;
  const apps: FastifyInstance[] = [];
  /** How many times each app's sign-in handler ran. */
  const logins = new Map<FastifyInstance, number>();
  const clients: Redis[] = [];

  async function app(redis: Redis, limitPerMinute: number): Promise<FastifyInstance> {
    const f = Fastify({ trustProxy: ['127.0.0.1/32'] });
    registerPublicRateLimit(f, {
      limiter: new RateLimiter(redis, prefix, { timeoutMs: 500 }),
      limitPerMinute,
      routes: [decl({}), decl({ method: 'GET', path: '/docs', operationId: 'operations.docs' }), decl({ method: 'GET', path: '/me', permission: 'authenticated', operationId: 'auth.me' })],
      logger,
    });
    f.post('/login', async () => {
      logins.set(f, (logins.get(f) ?? 0) + 1);
      return { ok: true };
    });
    f.get('/docs', async () => ({ ok: true }));
    f.get('/me', async () => ({ ok: true }));
    await f.listen({ port: 0, host: '127.0.0.1' });
    apps.push(f);
    return f;
  }

  /** A request over the socket (light-my-request's inject does not load under jest), from `ip` through the trusted 127.0.0.1. */
  async function send(f: FastifyInstance, method: string, url: string, ip: string) {
    const { port } = f.server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}${url}`, { method, headers: { 'x-forwarded-for': ip } });
    const text = await res.text();
    return { statusCode: res.status, headers: Object.fromEntries(res.headers), json: () => JSON.parse(text) };
  }

  async function client(url = REDIS_URL): Promise<Redis> {
    const redis = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, disconnectTimeout: 50 });
    clients.push(redis);
    return redis;
  }

  afterAll(async () => {
    for (const a of apps) await a.close();
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
    for (const c of clients) c.disconnect();
  });

  it('answers 429 problem+json with Retry-After once an address has used its quota, and counts each address apart', async () => {
    const redis = await client();
    await new Promise((r) => redis.once('ready', r));
    const f = await app(redis, 3);
    for (let i = 0; i < 3; i++) {
      const ok = await send(f, 'POST', '/login', '198.51.100.1');
      expect(ok.statusCode).toBe(200);
      expect(ok.headers['ratelimit-remaining']).toBe(String(2 - i));
    }
    const refused = await send(f, 'POST', '/login', '198.51.100.1');
    expect(refused.statusCode).toBe(429);
    expect(refused.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(refused.json()).toMatchObject({ status: 429, code: 'rate_limited', detail: expect.stringContaining('At most 3 requests a minute') });
    // The refused request never reached the handler.
    expect(logins.get(f)).toBe(3);
    // Another client behind the same proxy has its own quota; unlimited and authenticated routes are not counted.
    expect((await send(f, 'POST', '/login', '198.51.100.2')).statusCode).toBe(200);
    expect((await send(f, 'GET', '/docs', '198.51.100.1')).statusCode).toBe(200);
    expect((await send(f, 'GET', '/me', '198.51.100.1')).statusCode).toBe(200);
    expect(await redis.keys(`${prefix}ratelimit:198.51.100.1:*`)).toHaveLength(1);
  });

  it('its hook lets a request through (done) or answers it (429, no done), never both', async () => {
    const redis = await client();
    // Connected first: with the offline queue off, a limiter before that fails open.
    await new Promise((r) => redis.once('ready', r));
    let hook: ((req: unknown, reply: unknown, done: (err?: Error) => void) => void) | undefined;
    registerPublicRateLimit({ addHook: (_name: string, fn: typeof hook) => (hook = fn) } as unknown as FastifyInstance, {
      limiter: new RateLimiter(redis, prefix, { timeoutMs: 500 }),
      limitPerMinute: 1,
      routes: [decl({})],
      logger,
    });
    const run = (url: string) => {
      const done = jest.fn();
      const result = new Promise<{ passed: boolean; status?: number }>((resolve) => {
        let status: number | undefined;
        const reply = {
          headers: () => reply,
          status: (s: number) => ((status = s), reply),
          type: () => reply,
          send: () => resolve({ passed: false, status }),
          // As Fastify's reply is: a thenable, settled (with nothing) once the answer is sent.
          then: (fulfilled: () => void) => fulfilled(),
        };
        done.mockImplementation(() => resolve({ passed: true }));
        hook!({ method: 'POST', url, ip: '198.51.100.9', routeOptions: { url } }, reply, done);
      });
      return { result, done };
    };
    expect(await run('/other').result).toEqual({ passed: true });
    expect(await run('/login').result).toEqual({ passed: true });
    const refused = run('/login');
    expect(await refused.result).toEqual({ passed: false, status: 429 });
    // Nothing more comes after the answer: a done now would run the handler on an answered request.
    await new Promise((r) => setTimeout(r, 50));
    expect(refused.done).not.toHaveBeenCalled();
  });

  it('serves the requests when Redis cannot be reached (fail open), as the tenant limit does', async () => {
    // A port nothing listens on: the real client's connection is refused.
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const f = await app(await client(`redis://127.0.0.1:${port}`), 1);
    for (let i = 0; i < 3; i++) expect((await send(f, 'POST', '/login', '198.51.100.3')).statusCode).toBe(200);
  });

  it('is off with a limit of 0', async () => {
    const redis = await client();
    const f = await app(redis, 0);
    for (let i = 0; i < 3; i++) expect((await send(f, 'POST', '/login', '198.51.100.4')).statusCode).toBe(200);
    // (The limit never asked Redis, so the client may still be connecting: it is asked once it is ready.)
    if (redis.status !== 'ready') await new Promise((resolve) => redis.once('ready', resolve));
    expect(await redis.keys(`${prefix}ratelimit:198.51.100.4:*`)).toEqual([]);
  });
});
