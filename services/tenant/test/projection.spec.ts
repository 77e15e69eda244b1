import { Client } from 'pg';
import { parseConfig } from '@keel/config';
import { CommandResult, KeelError, newEventId, Tenant } from '@keel/contracts';
import { connectMessaging, EventStore, Messaging, RpcClient } from '@keel/messaging';
import { cleanupEnv, eventually, isolatedEnv, Stack } from '@keel/testing';

const meta = { actor: { kind: 'system' as const, id: 'projection-test' }, correlationId: 'projection-test' };

/** The tenant read model against real NATS, Postgres and Redis, with the real audit service. */
describe('tenant read model', () => {
  const env = isolatedEnv('projection');
  const stack = new Stack(env);
  let m: Messaging;
  let rpc: RpcClient;
  let db: Client;

  const command = (name: string, payload: unknown, expectedVersion?: number) =>
    rpc.request<CommandResult<Tenant>>(`cmd.tenant.${name}`, { meta: { ...meta, ...(expectedVersion ? { expectedVersion } : {}) }, payload });
  const snapshot = async () => (await db.query('SELECT * FROM tenant.tenants ORDER BY id')).rows;
  const ledgerHead = async () => Number((await db.query('SELECT coalesce(max(seq), 0) AS s FROM audit.ledger')).rows[0].s);
  const until = async (check: () => Promise<boolean>, what: string) => {
    await eventually(check, (ok) => ok, { timeoutMs: 30_000, what });
  };
  /**
   * qry.tenant.get with consistentWith, asked again while it answers consistency_timeout or
   * service_unavailable (the read model catching up); any other answer is final.
   */
  const getConsistent = async (idOrSlug: string, consistentWith: number): Promise<Tenant> => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        return await rpc.request<Tenant>('qry.tenant.get', { idOrSlug, consistentWith });
      } catch (error) {
        const retry = error instanceof KeelError && ['consistency_timeout', 'service_unavailable'].includes(error.code);
        if (!retry || Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };

  beforeAll(async () => {
    await stack.start('audit', 'tenant');
    m = await connectMessaging(parseConfig(env), 'projection-test');
    rpc = new RpcClient(m);
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
  });

  afterAll(async () => {
    await db?.end();
    await m?.nc.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('is rebuilt from the ledger identical to the live one, then continues live', async () => {
    let last = 0;
    for (let i = 0; i < 12; i++) {
      const created = await command('create', { slug: `rebuild-${i}`, name: `Rebuild ${i}`, plan: 'starter' });
      last = created.position;
      if (i % 2) last = (await command('change_plan', { tenantId: created.state.id, data: { plan: 'enterprise' } })).position;
      if (i % 3 === 0) last = (await command('suspend', { tenantId: created.state.id, data: { reason: `r${i}` } })).position;
      if (i % 4 === 0) last = (await command('update_settings', { tenantId: created.state.id, data: { allowedIpRanges: ['192.168.0.0/16'] } })).position;
    }
    await getConsistent('rebuild-0', last);
    await until(async () => (await ledgerHead()) >= last, 'the ledger');
    const live = await snapshot();
    expect(live).toHaveLength(12);

    await db.query('TRUNCATE tenant.tenants');
    expect(await snapshot()).toHaveLength(0);
    const { position } = await rpc.request<{ position: number }>('cmd.tenant.rebuild_read_model', {}, 60_000);
    expect(position).toBe(last);
    expect(await snapshot()).toEqual(live);

    const after = await command('create', { slug: 'after-rebuild', name: 'After', plan: 'professional' });
    const read = await getConsistent('after-rebuild', after.position);
    expect(read).toMatchObject({ id: after.state.id, plan: 'professional', version: 1 });
    expect(await snapshot()).toHaveLength(13);
  });

  it('answers from the Redis cache and stays correct when Redis forgets', async () => {
    const created = await command('create', { slug: 'cached-co', name: 'Cached', plan: 'starter' });
    await getConsistent(created.state.id, created.position);
    const Redis = (await import('ioredis')).default;
    const redis = new Redis(env.REDIS_URL!);
    try {
      await until(async () => (await redis.get(`${env.KEEL_REDIS_PREFIX}tenant:id:${created.state.id}`)) !== null, 'the cache');
      const changed = await command('change_plan', { tenantId: created.state.id, data: { plan: 'enterprise' } });
      await until(async () => JSON.parse((await redis.get(`${env.KEEL_REDIS_PREFIX}tenant:id:${created.state.id}`))!).version === 2, 'the cache update');
      expect((await rpc.request<Tenant>('qry.tenant.get', { idOrSlug: 'cached-co' })).plan).toBe('enterprise');
      await redis.del(`${env.KEEL_REDIS_PREFIX}tenant:id:${created.state.id}`, `${env.KEEL_REDIS_PREFIX}tenant:slug:cached-co`);
      const fromDb = await rpc.request<Tenant>('qry.tenant.get', { idOrSlug: 'cached-co' });
      expect(fromDb).toMatchObject({ plan: 'enterprise', version: 2 });
      expect(changed.version).toBe(2);
    } finally {
      redis.disconnect();
    }
  });

  it('dead-letters an event that can never apply, reports it, and goes on with the next ones', async () => {
    const store = new EventStore(m);
    const ghost = newEventId();
    const [bad] = await store.append(
      [{
        id: newEventId(), type: 'tenant.tenant.suspended', schemaVersion: 1, tenantId: ghost, aggregateType: 'tenant',
        aggregateId: ghost, aggregateVersion: 2, occurredAt: new Date().toISOString(), actor: meta.actor,
        correlationId: 'ghost', data: { reason: 'no such tenant' },
      }],
      0,
    );
    const good = await command('create', { slug: 'after-poison', name: 'After poison', plan: 'starter' });
    const read = await getConsistent('after-poison', good.position);
    expect(read.id).toBe(good.state.id);
    const { rows } = await db.query('SELECT position::int, reason FROM tenant.dead_letters');
    expect(rows).toEqual([{ position: bad, reason: expect.stringContaining('unknown tenant') }]);
    const ready = await fetch(`${stack.opsUrl('tenant')}/ready`);
    expect(ready.status).toBe(503);
    expect((await ready.json()).checks.projection.detail).toMatchObject({ deadLetters: 1, healthy: false });
  });

  it('answers qry.tenant.current from the log, by id or slug, before the read model has the tenant', async () => {
    const created = await command('create', { slug: 'current-co', name: 'Current', plan: 'starter' });
    const changed = await command('change_plan', { tenantId: created.state.id, data: { plan: 'enterprise' } });
    // Asked straight after the command: the log answers, whatever the projection has applied.
    for (const idOrSlug of [created.state.id, 'current-co']) {
      expect(await rpc.request<Tenant>('qry.tenant.current', { idOrSlug })).toEqual(changed.state);
    }
    await expect(rpc.request('qry.tenant.current', { idOrSlug: 'nobody-co' })).rejects.toMatchObject({ code: 'not_found' });
    await expect(rpc.request('qry.tenant.current', { idOrSlug: newEventId() })).rejects.toMatchObject({ code: 'not_found' });
    await expect(rpc.request('qry.tenant.current', { idOrSlug: '' })).rejects.toMatchObject({ code: 'validation_failed' });
  });

  it('takes over a slug whose reservation is stale and never became a tenant, but not a fresh one', async () => {
    await db.query(`INSERT INTO tenant.slug_reservations (slug, tenant_id, reserved_at) VALUES ('orphan-co', $1, now() - interval '5 minutes'), ('pending-co', $2, now())`, [
      newEventId(),
      newEventId(),
    ]);
    const taken = await command('create', { slug: 'orphan-co', name: 'Orphan', plan: 'starter' });
    expect(taken.state.slug).toBe('orphan-co');
    expect((await db.query(`SELECT tenant_id FROM tenant.slug_reservations WHERE slug = 'orphan-co'`)).rows).toEqual([{ tenant_id: taken.state.id }]);
    await expect(command('create', { slug: 'pending-co', name: 'Pending', plan: 'starter' })).rejects.toMatchObject({ code: 'slug_taken' });
    await expect(command('create', { slug: 'orphan-co', name: 'Again', plan: 'starter' })).rejects.toMatchObject({ code: 'slug_taken' });
  });
});
