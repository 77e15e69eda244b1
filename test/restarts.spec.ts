import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { expectCreatesLandedOnce } from './support/creates-landed-once';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, Stack } from '@keel/testing';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A NATS server of this test's own, so it can be restarted without disturbing anything else. */
class OwnNats {
  private proc?: ChildProcess;
  readonly dir = mkdtempSync(join(tmpdir(), 'keel-nats-'));
  constructor(readonly port: number) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.proc = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.dir], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      try {
        const { connect } = await import('nats');
        const nc = await connect({ servers: this.url, reconnect: false, timeout: 500 });
        await nc.jetstreamManager();
        await nc.close();
        return;
      } catch {
        await sleep(100);
      }
    }
    throw new Error('nats-server did not start');
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Invariant 1 across a restart of NATS: commands acknowledged (201) before and after the outage
 * all land in the ledger and the read model, and nothing lands twice. A command answered 503
 * around the outage may or may not have landed (its publish can still reach the restarted
 * server), so it is never retried with the same slug and is not counted either way.
 */
describe('a restart of NATS', () => {
  let nats: OwnNats;
  let env: Record<string, string>;
  let stack: Stack;

  beforeAll(async () => {
    nats = new OwnNats(await freePort());
    await nats.start();
    env = { ...isolatedEnv('restart'), NATS_URL: nats.url };
    stack = new Stack(env);
    await stack.start('audit', 'auth', 'tenant', 'gateway');
  });

  afterAll(async () => {
    await stack?.stop();
    await nats?.stop();
    // The database and Redis keys go; the stream went with the private server's directory.
    await cleanupEnv(env);
    nats?.remove();
  });

  it('loses no acknowledged command and applies none twice', async () => {
    const http = httpClient(stack.gatewayUrl, stack.token);
    const acknowledged: { id: string; slug: string; position: number }[] = [];
    const attempted = new Set<string>();
    let next = 0;
    /** Creates a tenant under a slug never used before (so an unacknowledged one that landed cannot collide). */
    const create = async (n = next++) => {
      const slug = `restart-${n}`;
      attempted.add(slug);
      const res = await http('POST', '/api/v1/tenants', { body: { slug, name: `R${n}`, plan: 'starter' } });
      if (res.status === 201) acknowledged.push({ id: res.body.tenant.id, slug, position: res.body.position });
      return res.status;
    };
    for (let i = 0; i < 30; i++) expect(await create()).toBe(201);

    await nats.stop();
    const during = await create(1000);
    expect(during).toBe(503);
    await nats.start();

    // Until the services are back on the restarted server: a fresh slug after every refusal.
    const recovered = await eventually(() => create(), (status) => status === 201, {
      timeoutMs: 60_000,
      intervalMs: 200,
      what: 'a create to be acknowledged after the restart',
    });
    expect(recovered).toBe(201);
    const afterRestart = acknowledged.length;
    for (let i = 0; i < 29; i++) expect(await create()).toBe(201);
    expect(acknowledged).toHaveLength(afterRestart + 29);

    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      await expectCreatesLandedOnce(http, db, acknowledged, attempted);
    } finally {
      await db.end();
    }
  });
});
