import Redis from 'ioredis';
import { once } from 'node:events';
import { DEFAULT_TENANT_SETTINGS, newEventId, Tenant } from '@keel/contracts';
import { cleanupEnv, eventually, isolatedEnv } from '@keel/testing';
import { TenantCache } from '../src/tenant/tenant-cache';

const tenant = (id: string, slug: string, version: number, over: Partial<Tenant> = {}): Tenant => ({
  id, slug, name: `Tenant v${version}`, plan: 'starter',
  quotas: { maxUsers: 25, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 5_000_000, requestsPerMinute: 600 },
  settings: DEFAULT_TENANT_SETTINGS, status: 'active', suspendedReason: null, version,
  createdAt: '2026-12-01T00:00:00.000Z', updatedAt: `2026-12-01T00:00:0${version}.000Z`, ...over,
});

/** The tenant cache against the real Redis: versions only move forward, and a failed write is not lost. */
describe('TenantCache', () => {
  const env = isolatedEnv('tenantcache');
  const prefix = env.KEEL_REDIS_PREFIX!;
  let observer: Redis;
  const clients: Redis[] = [];
  /** A client of its own, failing at once while disconnected (no offline queue), as when Redis is away. */
  const client = async () => {
    const c = new Redis(env.REDIS_URL!, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    await c.connect();
    clients.push(c);
    return c;
  };
  /** Redis away for this client: disconnected (its connection ended), so every command fails at once. */
  const away = async (c: Redis) => {
    const ended = once(c, 'end');
    c.disconnect();
    await ended;
  };
  const held = async (id: string) => {
    const text = await observer.get(`${prefix}tenant:id:${id}`);
    return text ? (JSON.parse(text) as Tenant) : null;
  };

  beforeAll(async () => {
    observer = new Redis(env.REDIS_URL!);
  });

  afterAll(async () => {
    for (const c of clients) c.disconnect();
    observer.disconnect();
    await cleanupEnv(env);
  });

  it('never puts an older version over a newer one: not a late fill, not a late put; the projection replaces an equal version, a fill does not', async () => {
    const cache = new TenantCache(await client(), prefix);
    const id = newEventId();
    await cache.put([tenant(id, 'acme-order', 2)]);
    await cache.fill(tenant(id, 'acme-order', 1));
    expect((await cache.get(id, true))?.version).toBe(2);
    await cache.put([tenant(id, 'acme-order', 1)]);
    expect((await cache.get(id, true))?.version).toBe(2);
    // The same version again: the projection's write is the model (a rebuild may correct it), a reader's is not.
    await cache.put([tenant(id, 'acme-order', 2, { name: 'Rebuilt' })]);
    expect((await cache.get(id, true))?.name).toBe('Rebuilt');
    await cache.fill(tenant(id, 'acme-order', 2, { name: 'From a slow read' }));
    expect((await cache.get('acme-order', false))?.name).toBe('Rebuilt');
    await cache.put([tenant(id, 'acme-order', 3, { status: 'suspended' })]);
    expect(await cache.get('acme-order', false)).toMatchObject({ id, version: 3, status: 'suspended' });
    // A tenant the cache does not hold is filled.
    const other = newEventId();
    await cache.fill(tenant(other, 'acme-other', 1));
    expect((await cache.get('acme-other', false))?.id).toBe(other);
  });

  it('writes the newest version again once Redis is back when the write failed while it was away', async () => {
    const c = await client();
    const cache = new TenantCache(c, prefix, { initialMs: 20, maxMs: 100 });
    const id = newEventId();
    await cache.put([tenant(id, 'acme-away', 1)]);
    await away(c);
    await expect(cache.put([tenant(id, 'acme-away', 2, { status: 'suspended', suspendedReason: 'unpaid' })])).rejects.toThrow();
    await expect(cache.put([tenant(id, 'acme-away', 3, { status: 'suspended', suspendedReason: 'unpaid, still' })])).rejects.toThrow();
    expect((await held(id))?.version).toBe(1);
    await c.connect();
    const now = await eventually(() => held(id), (t) => t?.version === 3, { what: 'the suspended tenant written again' });
    expect(now).toMatchObject({ status: 'suspended', suspendedReason: 'unpaid, still' });
  });

  it('never brings back what was dropped, nor writes over an equal version, when it writes a failed put again', async () => {
    const c = await client();
    const cache = new TenantCache(c, prefix, { initialMs: 20, maxMs: 100 });
    const [a, b, d] = [newEventId(), newEventId(), newEventId()];
    await cache.put([tenant(a, 'acme-retry-a', 1), tenant(b, 'acme-retry-b', 1), tenant(d, 'acme-retry-d', 1)]);
    await away(c);
    await expect(cache.put([tenant(a, 'acme-retry-a', 2), tenant(b, 'acme-retry-b', 2), tenant(d, 'acme-retry-d', 2)])).rejects.toThrow();
    // Meanwhile (another replica, a rebuild): b is forgotten, d is written at the same version from the rebuilt model.
    await observer.del(`${prefix}tenant:id:${b}`, `${prefix}tenant:slug:acme-retry-b`);
    await observer.set(`${prefix}tenant:id:${d}`, JSON.stringify(tenant(d, 'acme-retry-d', 2, { name: 'Rebuilt' })));
    await c.connect();
    // The retry ran (a is written again, in the same chunk as b and d) …
    await eventually(() => held(a), (t) => t?.version === 2, { what: 'the failed put written again' });
    // … and neither brought b back nor wrote over d's rebuilt entry.
    expect(await held(b)).toBeNull();
    expect(await observer.get(`${prefix}tenant:slug:acme-retry-b`)).toBeNull();
    expect((await held(d))?.name).toBe('Rebuilt');
  });

  it('clears the whole cache once Redis is back when forgetting tenants failed', async () => {
    const c = await client();
    const cache = new TenantCache(c, prefix, { initialMs: 20, maxMs: 100 });
    const [a, b] = [newEventId(), newEventId()];
    await cache.put([tenant(a, 'acme-forget-a', 1), tenant(b, 'acme-forget-b', 1)]);
    await away(c);
    await expect(cache.forget([{ id: a, slug: 'acme-forget-a' }])).rejects.toThrow();
    await c.connect();
    // Both go: what could not be forgotten selectively is dropped with everything else.
    await eventually(async () => [await held(a), await held(b)], (r) => r.every((t) => t === null), { what: 'the cache cleared' });
    expect(await observer.get(`${prefix}tenant:slug:acme-forget-b`)).toBeNull();
  });
});
