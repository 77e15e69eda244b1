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
    await stack.start('audit', 'auth', 'tenant');
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

    // Rebuilt beside the live model while it is read and written: readers never see it empty or
    // half-built, live writes keep landing, and the swapped-in model equals the live one.
    const rebuild = (projection = 'tenants') =>
      rpc.request<{ name: string; position: number; replayed: number }>('cmd.tenant.rebuild_projection', { meta, payload: { projection } }, 120_000);
    let reading = true;
    const counts: number[] = [];
    const reader = (async () => {
      while (reading) counts.push(Number((await db.query('SELECT count(*) AS n FROM tenant.tenants')).rows[0].n));
    })();
    const during: Promise<CommandResult<Tenant>>[] = [];
    const rebuilt = rebuild();
    for (let i = 0; i < 5; i++) during.push(command('create', { slug: `during-${i}`, name: `During ${i}`, plan: 'starter' }));
    const result = await rebuilt;
    const writes = await Promise.all(during);
    reading = false;
    await reader;
    expect(result.name).toBe('tenant.tenants');
    expect(result.position).toBeGreaterThanOrEqual(last);
    expect(result.replayed).toBeGreaterThanOrEqual(live.length);
    expect(counts.length).toBeGreaterThan(0);
    expect(Math.min(...counts)).toBeGreaterThanOrEqual(12);
    const lastWrite = Math.max(...writes.map((w) => w.position));
    for (const w of writes) expect(await getConsistent(w.state.id, lastWrite)).toMatchObject({ id: w.state.id, version: 1 });
    const liveAfter = await snapshot();
    expect(liveAfter).toHaveLength(17);
    expect(liveAfter.filter((r) => live.some((l) => l.id === r.id))).toEqual(live);

    // The rebuilt model compared with the live one: rebuilt again, it is identical row for row.
    await until(async () => (await ledgerHead()) >= lastWrite, 'the ledger');
    const again = await rebuild();
    expect(again.position).toBeGreaterThanOrEqual(lastWrite);
    expect(await snapshot()).toEqual(liveAfter);

    // A lost read model comes back whole.
    await db.query('TRUNCATE tenant.tenants');
    expect(await snapshot()).toHaveLength(0);
    const { position } = await rpc.request<{ position: number }>('cmd.tenant.rebuild_read_model', {}, 60_000);
    expect(position).toBeGreaterThanOrEqual(lastWrite);
    expect(await snapshot()).toEqual(liveAfter);

    const after = await command('create', { slug: 'after-rebuild', name: 'After', plan: 'professional' });
    const read = await getConsistent('after-rebuild', after.position);
    expect(read).toMatchObject({ id: after.state.id, plan: 'professional', version: 1 });
    expect(await snapshot()).toHaveLength(18);
    await expect(rebuild('nothing')).rejects.toMatchObject({ code: 'not_found' });
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

  it('a rebuild makes the cache forget the tenants it put right, and only those', async () => {
    const drifted = await command('create', { slug: 'drifted-co', name: 'Drifted Co', plan: 'starter' });
    const steady = await command('create', { slug: 'steady-co', name: 'Steady Co', plan: 'starter' });
    await getConsistent(steady.state.id, steady.position);
    await until(async () => (await ledgerHead()) >= steady.position, 'the ledger');
    const Redis = (await import('ioredis')).default;
    const redis = new Redis(env.REDIS_URL!);
    const idKey = (id: string) => `${env.KEEL_REDIS_PREFIX}tenant:id:${id}`;
    try {
      await until(async () => (await redis.get(idKey(steady.state.id))) !== null, 'the cache');
      // The live row drifted (a bug, a hand edit), and the cache was filled from it.
      await db.query(`UPDATE tenant.tenants SET name = 'Wrong' WHERE id = $1`, [drifted.state.id]);
      await redis.del(idKey(drifted.state.id), `${env.KEEL_REDIS_PREFIX}tenant:slug:drifted-co`);
      expect((await rpc.request<Tenant>('qry.tenant.get', { idOrSlug: drifted.state.id })).name).toBe('Wrong');
      await until(async () => (await redis.get(idKey(drifted.state.id))) !== null, 'the drifted row in the cache');
      const steadyCached = await redis.get(idKey(steady.state.id));

      await rpc.request('cmd.tenant.rebuild_projection', { meta, payload: { projection: 'tenants' } }, 120_000);
      expect(await redis.get(idKey(drifted.state.id))).toBeNull();
      expect((await rpc.request<Tenant>('qry.tenant.get', { idOrSlug: 'drifted-co' })).name).toBe('Drifted Co');
      // The rows the rebuild agreed with stay cached.
      expect(await redis.get(idKey(steady.state.id))).toBe(steadyCached);
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
    // Reported, not hidden; the service still serves (readiness fails only while a projection cannot apply).
    const ready = await fetch(`${stack.opsUrl('tenant')}/ready`);
    expect(ready.status).toBe(200);
    expect((await ready.json()).checks.projection.detail).toMatchObject({ deadLetters: 1, healthy: false });
    const metrics = await (await fetch(`${stack.opsUrl('tenant')}/metrics`)).text();
    expect(metrics).toMatch(/keel_projection_dead_letters\{[^}]*projection="tenants"[^}]*\} 1/);

    // Durable: a restart does not make the projection healthy again.
    await stack.kill('tenant', 'SIGTERM');
    await stack.startOne('tenant');
    const detail = async () => (await (await fetch(`${stack.opsUrl('tenant')}/ready`)).json()).checks?.projection?.detail;
    await eventually(detail, (d) => d?.leader === true, { timeoutMs: 30_000, what: 'the restarted projection to lead' });
    expect(await detail()).toMatchObject({ deadLetters: 1, healthy: false });
    const listed = await rpc.request<{ items: { name: string; healthy: boolean; deadLetters: number; lag: number }[] }>('qry.tenant.projections', {});
    expect(listed.items).toEqual([expect.objectContaining({ name: 'tenant.tenants', healthy: false, deadLetters: 1 })]);

    // An operator lists it, a retry still fails (and says why), a skip is an event with its actor.
    const letters = await rpc.request<{ items: { id: number; position: number; reason: string }[] }>('qry.tenant.dead_letters', { projection: 'tenants' });
    expect(letters.items).toEqual([expect.objectContaining({ position: bad, reason: expect.stringContaining('unknown tenant') })]);
    const id = letters.items[0]!.id;
    const operator = { actor: { kind: 'user' as const, id: 'operator-1' }, correlationId: 'dlq-test' };
    await expect(rpc.request('cmd.tenant.retry_dead_letter', { meta: operator, payload: { projection: 'tenants', id } })).rejects.toMatchObject({
      code: 'conflict',
      message: expect.stringContaining('still does not apply'),
    });
    const skipped = await rpc.request<{ resolution: string; resolvedBy: string; eventPosition: number }>('cmd.tenant.skip_dead_letter', {
      meta: operator,
      payload: { projection: 'tenants', id },
    });
    expect(skipped).toMatchObject({ resolution: 'skipped', resolvedBy: 'user:operator-1' });
    const recorded = await store.readPosition(skipped.eventPosition);
    expect(recorded!.event).toMatchObject({ type: 'ops.dead_letter.skipped', actor: operator.actor, data: { projection: 'tenant.tenants', position: bad } });
    await expect(rpc.request('cmd.tenant.skip_dead_letter', { meta: operator, payload: { projection: 'tenants', id } })).rejects.toMatchObject({ code: 'conflict' });
    expect(await detail()).toMatchObject({ deadLetters: 0, healthy: true });
    expect((await rpc.request<{ items: { healthy: boolean }[] }>('qry.tenant.projections', {})).items[0]).toMatchObject({ healthy: true });
    expect((await rpc.request<{ items: { resolution: string }[] }>('qry.tenant.dead_letters', { projection: 'tenants', resolved: true })).items).toHaveLength(1);
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
