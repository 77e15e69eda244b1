import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { expectCreatesLandedOnce } from './support/creates-landed-once';
import { connect } from 'node:net';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, ServiceName, serviceNames, Stack } from '@keel/testing';

const PG_BIN = '/usr/lib/postgresql/15/bin';

/** As root, Postgres runs as the `postgres` user (it refuses root). */
function postgresOwner(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  return { uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' })), gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' })) };
}

/** A PostgreSQL server of this test's own (initdb into a temp dir, trust auth), so it can be restarted. */
class OwnPostgres {
  private proc?: ChildProcess;
  readonly dir = mkdtempSync(join(tmpdir(), 'keel-pg-'));
  private readonly owner = postgresOwner();
  constructor(readonly port: number) {}

  url(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  async init(): Promise<void> {
    chmodSync(this.dir, 0o777);
    if (this.owner.uid !== undefined) execFileSync('chown', ['-R', `${this.owner.uid}:${this.owner.gid}`, this.dir]);
    execFileSync(join(PG_BIN, 'initdb'), ['-D', join(this.dir, 'data'), '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C'], {
      ...this.owner,
      cwd: this.dir,
      stdio: 'ignore',
    });
  }

  async start(): Promise<void> {
    this.proc = spawn(
      join(PG_BIN, 'postgres'),
      ['-D', join(this.dir, 'data'), '-p', String(this.port), '-k', this.dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200', '-c', 'fsync=off'],
      { ...this.owner, cwd: this.dir, stdio: 'ignore' },
    );
    await eventually(
      async () => {
        const c = new Client({ connectionString: this.url('postgres'), connectionTimeoutMillis: 1_000 });
        await c.connect();
        await c.end();
        return true;
      },
      (ok) => ok,
      { timeoutMs: 30_000, intervalMs: 100, what: `postgres on port ${this.port} to accept connections` },
    );
  }

  /** A fast shutdown (SIGINT): sessions are ended (57P01), as in a real restart. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGINT');
    await exited;
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A Redis server of this test's own, without persistence: a restart forgets everything. */
class OwnRedis {
  private proc?: ChildProcess;
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.proc = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(this.port), '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: 'ignore' });
    await eventually(
      () =>
        new Promise<boolean>((resolve) => {
          const socket = connect(this.port, '127.0.0.1');
          socket.setTimeout(1_000, () => socket.destroy());
          socket.once('connect', () => socket.write('PING\r\n'));
          socket.once('data', (d) => {
            resolve(d.toString().startsWith('+PONG'));
            socket.destroy();
          });
          socket.once('error', () => resolve(false));
          socket.once('close', () => resolve(false));
        }),
      (ok) => ok,
      { timeoutMs: 30_000, intervalMs: 100, what: `redis on port ${this.port}` },
    );
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }
}

interface Outcome {
  route: string;
  status: number;
  retryAfter: string | null;
  code?: string;
  /** A refusal's `detail`, to say why in a failure's message. */
  detail?: string;
  at: number;
}

/**
 * Invariant 1 and the outage contract across a restart of PostgreSQL and of Redis, each a
 * server of this test's own with the real stack pointed at it. Under a steady load of creates
 * (and sign-ins and authenticated reads): every answer is 2xx or 503 with Retry-After, never
 * a 500; every create acknowledged lands once in the ledger and the read model; every process
 * is ready again within 30 s of the server's return. A create answered 503 may or may not have
 * landed, so its slug is never reused and it is not counted either way.
 */
describe('a restart of PostgreSQL and of Redis', () => {
  let pg: OwnPostgres;
  let redis: OwnRedis;
  let env: Record<string, string>;
  let stack: Stack;
  const services: ServiceName[] = serviceNames();

  beforeAll(async () => {
    pg = new OwnPostgres(await freePort());
    await pg.init();
    await pg.start();
    redis = new OwnRedis(await freePort());
    await redis.start();
    const base = isolatedEnv('pgredisrestart');
    env = { ...base, DATABASE_URL: pg.url(new URL(base.DATABASE_URL!).pathname.slice(1)), REDIS_URL: redis.url };
    stack = new Stack(env);
    await stack.start(...services);
  });

  afterAll(async () => {
    await stack?.stop();
    await redis?.stop();
    await pg?.stop();
    // The stream is on the shared NATS; the database and Redis keys went with the private servers.
    if (env) await cleanupEnv(env);
    pg?.remove();
  });

  it('answers 2xx or 503 with Retry-After throughout, loses no acknowledged create, applies none twice, and is ready again within 30 s', async () => {
    const operator = httpClient(stack.gatewayUrl, stack.token);
    const anonymous = httpClient(stack.gatewayUrl);
    const outcomes: Outcome[] = [];
    const acknowledged: { id: string; slug: string; position: number; at: number }[] = [];
    const attempted = new Set<string>();
    let next = 0;
    let running = true;
    const record = (route: string, res: { status: number; headers: Headers; body: { code?: string; detail?: string } | undefined }) =>
      outcomes.push({
        route,
        status: res.status,
        retryAfter: res.headers.get('retry-after'),
        code: res.body?.code,
        ...(res.status >= 400 ? { detail: res.body?.detail } : {}),
        at: Date.now(),
      });

    const signIn = await anonymous('POST', '/api/v1/auth/login', { body: stack.admin });
    expect(signIn.status).toBe(200);
    const admin = httpClient(stack.gatewayUrl, signIn.body.accessToken as string);
    // The sign-ins under load are another user's: a user's sessions beyond the tenant's
    // maxConcurrentSessions (10) are revoked, the admin's reading one among them.
    const home = await operator('POST', '/api/v1/tenants', { body: { slug: 'pr-signins', name: 'Sign-ins', plan: 'starter' } });
    expect(home.status).toBe(201);
    attempted.add('pr-signins');
    const member = { tenant: 'pr-signins', email: 'member@pr-signins.test', password: 'a long enough passphrase 1' };
    await eventually(
      () => operator('GET', `/api/v1/tenants/${home.body.tenant.id}?consistentWith=${home.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, intervalMs: 100, what: 'the sign-in tenant in the read model' },
    );
    const created = await operator('POST', `/api/v1/tenants/${home.body.tenant.id}/users`, { body: { email: member.email, name: 'Member', password: member.password } });
    expect(created.status).toBe(201);

    const creates = async () => {
      while (running) {
        const n = next++;
        const slug = `pr-${n}`;
        attempted.add(slug);
        const res = await operator('POST', '/api/v1/tenants', { body: { slug, name: `PR ${n}`, plan: 'starter' } });
        record('create', res);
        if (res.status === 201) acknowledged.push({ id: res.body.tenant.id, slug, position: res.body.position, at: Date.now() });
      }
    };
    const signIns = async () => {
      while (running) record('sign-in', await anonymous('POST', '/api/v1/auth/login', { body: member }));
    };
    const reads = async () => {
      while (running) record('authenticated read', await admin('GET', '/api/v1/tenants?limit=5'));
    };
    const load = [...Array.from({ length: 8 }, () => creates()), signIns(), reads(), reads()];

    const acknowledgedAfter = (t: number, n: number, what: string) =>
      eventually(async () => acknowledged.filter((a) => a.at > t).length, (count) => count >= n, { timeoutMs: 60_000, intervalMs: 50, what });
    const refusedAfter = (t: number, route: string, what: string) =>
      eventually(async () => outcomes.filter((o) => o.at > t && o.route === route && o.status === 503).length, (count) => count >= 1, {
        timeoutMs: 30_000,
        intervalMs: 20,
        what,
      });
    const allReadyWithin30s = async (since: number, what: string) => {
      for (const name of services) {
        const url = `${stack.opsUrl(name)}/ready`;
        // The answer's body names the check that is failing, for the message on a timeout.
        await eventually(
          () => fetch(url, { signal: AbortSignal.timeout(5_000) }).then(async (r) => ({ status: r.status, body: await r.text() })),
          (ready) => ready.status === 200,
          { timeoutMs: Math.max(0, 30_000 - (Date.now() - since)), intervalMs: 100, what: `${name} /ready after ${what}` },
        );
      }
      expect(Date.now() - since).toBeLessThan(30_000);
    };

    try {
      await acknowledgedAfter(0, 20, 'creates before the restarts');

      // PostgreSQL: a fast shutdown, a while down under load, back on the same port.
      const pgDown = Date.now();
      await pg.stop();
      await refusedAfter(pgDown, 'create', 'a create refused while Postgres is down');
      await pg.start();
      const pgBack = Date.now();
      await allReadyWithin30s(pgBack, 'the Postgres restart');
      await acknowledgedAfter(pgBack, 20, 'creates after the Postgres restart');

      // Redis: everything it held is gone after the restart (no persistence).
      const redisDown = Date.now();
      await redis.stop();
      await refusedAfter(redisDown, 'sign-in', 'a sign-in refused while Redis is down');
      // Routes that do not need Redis keep working while it is down.
      const whileDown = Date.now();
      await acknowledgedAfter(whileDown, 5, 'creates while Redis is down');
      await eventually(async () => outcomes.filter((o) => o.at > whileDown && o.route === 'authenticated read' && o.status === 200).length, (n) => n >= 5, {
        timeoutMs: 30_000,
        what: 'authenticated reads while Redis is down',
      });
      await redis.start();
      const redisBack = Date.now();
      await allReadyWithin30s(redisBack, 'the Redis restart');
      await acknowledgedAfter(redisBack, 20, 'creates after the Redis restart');
      await eventually(async () => outcomes.filter((o) => o.at > redisBack && o.route === 'sign-in' && o.status === 200).length, (n) => n >= 1, {
        timeoutMs: 30_000,
        what: 'a sign-in after the Redis restart',
      });
    } catch (error) {
      // What the load saw in its last 15 s, and each service's last words: the cause of a timeout.
      const since = Date.now() - 15_000;
      const seen: Record<string, number> = {};
      for (const o of outcomes.filter((o) => o.at > since)) {
        const key = `${o.route}: ${o.status} ${o.code ?? ''} ${o.detail ?? ''}`.trim();
        seen[key] = (seen[key] ?? 0) + 1;
      }
      process.stderr.write(`answers in the last 15 s: ${JSON.stringify(seen)}\n`);
      for (const name of services) process.stderr.write(`--- ${name}\n${stack.logs(name).slice(-4000)}\n`);
      throw error;
    } finally {
      running = false;
      await Promise.allSettled(load);
    }

    // Never a 500, nor anything but success or a 503 that says when to retry.
    const unexpected = outcomes.filter((o) => !(o.status >= 200 && o.status < 300) && !(o.status === 503 && o.retryAfter !== null));
    const summary: Record<string, number> = {};
    for (const o of unexpected) {
      const key = `${o.route}: ${o.status} ${o.code ?? ''}${o.status === 503 ? ' without Retry-After' : ''} ${o.detail ?? ''}`.trim();
      summary[key] = (summary[key] ?? 0) + 1;
    }
    if (unexpected.length) for (const name of services) process.stderr.write(`--- ${name}\n${stack.logs(name).slice(-6000)}\n`);
    expect(summary).toEqual({});
    expect(outcomes.filter((o) => o.status === 503).length).toBeGreaterThan(0);

    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      await expectCreatesLandedOnce(operator, db, acknowledged, attempted);

      // Each service connected with its own role, none as the superuser (this server serves only this test).
      const { rows: sessions } = await db.query(
        `SELECT DISTINCT usename, application_name FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename IS NOT NULL`,
      );
      expect(sessions.length).toBeGreaterThan(0);
      for (const s of sessions) {
        const owner = /^keel-(audit|auth|tenant)\b/.exec(s.application_name as string)?.[1];
        expect({ application: s.application_name, user: s.usename }).toEqual({ application: s.application_name, user: owner ? `keel_${owner}` : expect.stringMatching(/^keel_/) });
      }
    } finally {
      await db.end();
    }
  });
});
