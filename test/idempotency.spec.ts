import { ChildProcess, spawn } from 'node:child_process';
import { connect, JSONCodec, NatsConnection } from 'nats';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, Redis, Stack } from '@keel/testing';

/** Short, so that "longer than the request timeout" is quick to reach. */
const REQUEST_TIMEOUT_MS = 2_000;
/** The gateway's pending marker lives at most the request timeout plus this (PENDING_MARGIN_MS). */
const PENDING_MARGIN_MS = 1_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

interface StreamEvent {
  position: number;
  event: { id: string; type: string; aggregateId: string; aggregateVersion: number; commandId?: string; data: Record<string, unknown> };
}

/** What the stream of one isolated environment holds, read straight from JetStream. */
function streamReader(nc: () => NatsConnection, env: Record<string, string>) {
  const codec = JSONCodec<StreamEvent['event']>();
  const lastSeq = async () => (await (await nc().jetstreamManager()).streams.info(env.KEEL_STREAM!)).state.last_seq;
  const events = async (after = 0): Promise<StreamEvent[]> => {
    const jsm = await nc().jetstreamManager();
    const last = await lastSeq();
    const out: StreamEvent[] = [];
    for (let seq = after + 1; seq <= last; seq++) {
      const m = await jsm.streams.getMessage(env.KEEL_STREAM!, { seq });
      out.push({ position: m.seq, event: codec.decode(m.data) });
    }
    return out;
  };
  const createdWithSlug = async (slug: string, after = 0) =>
    (await events(after)).filter((e) => e.event.type === 'tenant.tenant.created' && e.event.data.slug === slug);
  const ofAggregate = async (id: string) => (await events()).filter((e) => e.event.aggregateId === id);
  return { lastSeq, events, createdWithSlug, ofAggregate };
}

/**
 * Once the server has the subscription: a promise of the first command the gateway sends on
 * `subject` (a plain subscriber gets a copy of each request; the service's queue group answers).
 */
async function firstRequestOn(nc: NatsConnection, env: Record<string, string>, subject: string): Promise<{ seen: Promise<{ meta: { commandId?: string } }> }> {
  const sub = nc.subscribe(`${env.KEEL_SUBJECT_PREFIX}${subject}`, { max: 1 });
  const seen = (async () => {
    for await (const m of sub) return JSONCodec<{ meta: { commandId?: string } }>().decode(m.data);
    throw new Error(`no request on ${subject}`);
  })();
  await nc.flush();
  return { seen };
}

/** Exactly once at the edge: an `Idempotency-Key` is the command's id, applied once whatever fails in between. */
describe('Idempotency-Key through gateway crashes, timeouts and a forgetful Redis', () => {
  const env = isolatedEnv('idempotency');
  const stack = new Stack(env, { KEEL_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS) });
  let nc: NatsConnection;
  let redis: Redis;
  let http: ReturnType<typeof httpClient>;
  let frozen = false;
  let gatewayDown = false;
  const stream = streamReader(() => nc, env);

  const idemKeys = async () => redis.keys(`${env.KEEL_REDIS_PREFIX}idem:*`);
  const freezeTenant = () => {
    stack.signal('tenant', 'SIGSTOP');
    frozen = true;
  };
  const continueTenant = () => {
    stack.signal('tenant', 'SIGCONT');
    frozen = false;
  };
  /** One entry per event of the aggregate in the ledger (the audit service's copy of the stream). */
  const ledgerHolds = (aggregateId: string, n: number) =>
    eventually(
      () => http('GET', `/api/v1/audit/events?aggregateId=${aggregateId}&limit=100`),
      (r) => r.status === 200 && r.body.items.length >= n,
      { timeoutMs: 30_000, intervalMs: 100, what: `${n} ledger entries of ${aggregateId}` },
    );

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    http = httpClient(stack.gatewayUrl, stack.token);
    nc = await connect({ servers: env.NATS_URL });
    redis = new Redis(env.REDIS_URL!);
  });

  // A failed test leaves the stack as the next one needs it: the service running, the gateway up.
  afterEach(async () => {
    if (frozen) continueTenant();
    if (gatewayDown) {
      await stack.startOne('gateway');
      gatewayDown = false;
    }
  });

  afterAll(async () => {
    if (frozen) stack.signal('tenant', 'SIGCONT');
    await nc?.close();
    redis?.disconnect();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('a gateway killed mid-request: the pending marker expires within the request timeout, and the retry answers the one tenant the first request created', async () => {
    const body = { slug: 'crash-co', name: 'Crash', plan: 'starter' };
    const headers = { 'idempotency-key': 'crash-1' };
    const before = await stream.lastSeq();
    const forwarded = (await firstRequestOn(nc, env, 'cmd.tenant.create')).seen;
    freezeTenant();

    const inFlight = http('POST', '/api/v1/tenants', { body, headers }).then(
      (r) => r,
      (e: Error) => e,
    );
    const command = await forwarded; // the gateway holds the pending marker and waits for the frozen service
    const markedAt = Date.now();
    expect(command.meta.commandId).toMatch(UUID);
    const markers = await idemKeys();
    expect(markers).toHaveLength(1);
    const ttl = await redis.pttl(markers[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(REQUEST_TIMEOUT_MS + PENDING_MARGIN_MS);
    // Watched from now on: nobody will release the marker (its gateway dies), so it must expire by itself.
    const expiredAt = eventually(() => redis.exists(markers[0]!), (n) => n === 0, {
      timeoutMs: REQUEST_TIMEOUT_MS + PENDING_MARGIN_MS + 2_000,
      intervalMs: 25,
      what: 'the pending marker to expire',
    }).then(() => Date.now());

    await stack.kill('gateway');
    gatewayDown = true;
    const outcome = await inFlight;
    expect(outcome).not.toHaveProperty('status'); // the connection died with the gateway: no answer
    expect(String(outcome)).toMatch(/fetch failed/);
    continueTenant();

    // The frozen service goes on and applies the first request; its answer goes nowhere.
    const [created] = await eventually(() => stream.createdWithSlug('crash-co', before), (e) => e.length > 0, {
      timeoutMs: 30_000,
      intervalMs: 50,
      what: 'the first request to be applied',
    });
    expect(created!.event.commandId).toBe(command.meta.commandId);
    // The marker went by itself within the request timeout (plus the margin), not in 24 hours.
    expect((await expiredAt) - markedAt).toBeLessThanOrEqual(REQUEST_TIMEOUT_MS + PENDING_MARGIN_MS + 500);

    await stack.startOne('gateway');
    gatewayDown = false;
    const retry = await http('POST', '/api/v1/tenants', { body, headers });

    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull(); // answered by the service, from its log
    expect(retry.body).toMatchObject({ tenant: { id: created!.event.aggregateId, slug: 'crash-co', version: 1 }, version: 1, position: created!.position });
    const again = await http('POST', '/api/v1/tenants', { body, headers });
    expect(again.status).toBe(201);
    expect(again.body).toEqual(retry.body);
    expect(again.headers.get('idempotent-replayed')).toBe('true');

    expect(await stream.createdWithSlug('crash-co')).toHaveLength(1);
    expect(await stream.ofAggregate(created!.event.aggregateId)).toHaveLength(1);
    const ledger = await ledgerHolds(created!.event.aggregateId, 1);
    expect(ledger.body.items).toHaveLength(1);
  });

  it('a retry after a 503 (the service frozen past the request timeout) answers the created tenant; one event', async () => {
    const body = { slug: 'timeout-co', name: 'Timeout', plan: 'starter' };
    const headers = { 'idempotency-key': 'timeout-1' };
    const before = await stream.lastSeq();
    const earlierKeys = await idemKeys();
    const forwarded = (await firstRequestOn(nc, env, 'cmd.tenant.create')).seen;
    freezeTenant();

    const first = http('POST', '/api/v1/tenants', { body, headers });
    await forwarded;
    const markers = (await idemKeys()).filter((k: string) => !earlierKeys.includes(k));
    expect(markers).toHaveLength(1);
    // While the first runs: the same request is 409 (retry after the marker's life), another one 422.
    const during = await http('POST', '/api/v1/tenants', { body, headers });
    expect(during.status).toBe(409);
    expect(during.body.code).toBe('idempotency_in_progress');
    expect(Number(during.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(Number(during.headers.get('retry-after'))).toBeLessThanOrEqual(Math.ceil((REQUEST_TIMEOUT_MS + PENDING_MARGIN_MS) / 1000));
    const other = await http('POST', '/api/v1/tenants', { body: { ...body, slug: 'timeout-other' }, headers });
    expect(other.status).toBe(422);
    expect(other.body.code).toBe('idempotency_key_reused');

    const timedOut = await first;
    expect(timedOut.status).toBe(503);
    expect(await redis.exists(markers[0]!)).toBe(0); // the 503 released the marker
    continueTenant();
    const [created] = await eventually(() => stream.createdWithSlug('timeout-co', before), (e) => e.length > 0, {
      timeoutMs: 30_000,
      intervalMs: 50,
      what: 'the timed-out request to be applied once the service goes on',
    });

    const retry = await http('POST', '/api/v1/tenants', { body, headers });

    expect(retry.status).toBe(201);
    expect(retry.body).toMatchObject({ tenant: { id: created!.event.aggregateId, slug: 'timeout-co', status: 'active' }, version: 1, position: created!.position });
    expect(await stream.createdWithSlug('timeout-co')).toHaveLength(1);
    expect(await stream.createdWithSlug('timeout-other')).toHaveLength(0);
    expect(await stream.ofAggregate(created!.event.aggregateId)).toHaveLength(1);
  });

  it('the same key with a different body is 422 and writes nothing', async () => {
    const headers = { 'idempotency-key': 'reuse-1' };
    const first = await http('POST', '/api/v1/tenants', { body: { slug: 'reuse-co', name: 'Reuse', plan: 'starter' }, headers });
    expect(first.status).toBe(201);
    const before = await stream.lastSeq();

    const reused = await http('POST', '/api/v1/tenants', { body: { slug: 'reuse-other', name: 'Reuse', plan: 'starter' }, headers });

    expect(reused.status).toBe(422);
    expect(reused.headers.get('content-type')).toContain('application/problem+json');
    expect(reused.body.code).toBe('idempotency_key_reused');
    expect(await stream.lastSeq()).toBe(before);
  });

  it('when Redis forgot the answer, the retry is answered from the log: the same tenant, no second event, no "slug taken"', async () => {
    const body = { slug: 'forgot-co', name: 'Forgot', plan: 'starter' };
    const headers = { 'idempotency-key': 'forgot-tenant' };
    const first = await http('POST', '/api/v1/tenants', { body, headers });
    expect(first.status).toBe(201);
    const before = await stream.lastSeq();

    await redis.del(...(await idemKeys()));
    const retry = await http('POST', '/api/v1/tenants', { body, headers });

    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(retry.body).toEqual(first.body);
    expect(await stream.lastSeq()).toBe(before);
    // Without the key the slug is taken: the retry above was recognised, not let through.
    const fresh = await http('POST', '/api/v1/tenants', { body });
    expect(fresh.status).toBe(409);
    expect(fresh.body.code).toBe('slug_taken');
  });
});

describe('Idempotency-Key on a user create', () => {
  const env = isolatedEnv('idemusers');
  const stack = new Stack(env);
  let nc: NatsConnection;
  let redis: Redis;
  const stream = streamReader(() => nc, env);

  beforeAll(async () => {
    await stack.start('audit', 'tenant', 'auth', 'gateway');
    nc = await connect({ servers: env.NATS_URL });
    redis = new Redis(env.REDIS_URL!);
  });

  afterAll(async () => {
    await nc?.close();
    redis?.disconnect();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('when Redis forgot the answer, the retry is answered from the log: the same user, no second event, no "email taken"', async () => {
    const http = httpClient(stack.gatewayUrl, stack.token);
    const tenant = await http('POST', '/api/v1/tenants', { body: { slug: 'users-co', name: 'Users', plan: 'starter' } });
    expect(tenant.status).toBe(201);
    const path = `/api/v1/tenants/${tenant.body.tenant.id}/users`;
    const body = { email: 'once@users.test', name: 'Once', roles: ['viewer'], password: 'a-long-enough-passphrase' };
    const headers = { 'idempotency-key': 'user-1' };
    const first = await http('POST', path, { body, headers });
    expect(first.status).toBe(201);
    const before = await stream.lastSeq();

    await redis.del(...(await redis.keys(`${env.KEEL_REDIS_PREFIX}idem:*`)));
    const retry = await http('POST', path, { body, headers });

    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(retry.body).toEqual(first.body);
    expect(await stream.lastSeq()).toBe(before);
    expect(await stream.ofAggregate(first.body.id)).toHaveLength(1);
    const fresh = await http('POST', path, { body });
    expect(fresh.status).toBe(409);
  });
});

/** A Redis server of this test's own, so it can be stopped without disturbing anything else. */
class OwnRedis {
  private proc?: ChildProcess;
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.proc = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(this.port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const probe = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 50 });
    probe.on('error', () => undefined);
    try {
      await eventually(() => probe.ping().catch(() => 'down'), (r) => r === 'PONG', { timeoutMs: 10_000, intervalMs: 50, what: 'redis-server to answer' });
    } finally {
      probe.disconnect();
    }
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }
}

describe('Idempotency-Key with Redis down', () => {
  let own: OwnRedis;
  let env: Record<string, string>;
  let stack: Stack;
  let nc: NatsConnection;

  beforeAll(async () => {
    own = new OwnRedis(await freePort());
    await own.start();
    env = { ...isolatedEnv('idemnoredis'), REDIS_URL: own.url };
    stack = new Stack(env);
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    nc = await connect({ servers: env.NATS_URL });
  });

  afterAll(async () => {
    await nc?.close();
    await stack?.stop();
    await own?.stop();
    // The Redis keys went with the private server (it kept nothing on disk).
    if (env) await cleanupEnv(env);
  });

  it('still creates, and the retry with the same key answers the same tenant with no second event', async () => {
    const http = httpClient(stack.gatewayUrl, stack.token);
    const stream = streamReader(() => nc, env);
    await own.stop();
    const body = { slug: 'no-redis-co', name: 'No Redis', plan: 'starter' };
    const headers = { 'idempotency-key': 'no-redis-1' };

    const first = await http('POST', '/api/v1/tenants', { body, headers });
    const retry = await http('POST', '/api/v1/tenants', { body, headers });

    expect(first.status).toBe(201);
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual(first.body);
    const created = await stream.createdWithSlug('no-redis-co');
    expect(created).toHaveLength(1);
    expect(created[0]!.event.aggregateId).toBe(first.body.tenant.id);
    expect(await stream.ofAggregate(first.body.tenant.id)).toHaveLength(1);
  });
});
