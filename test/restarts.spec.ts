import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { cleanupEnv, freePort, httpClient, isolatedEnv, Stack } from '@keel/testing';

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
 * Invariant 1 across a restart of NATS: commands acknowledged before, during the outage
 * (refused with 503) and after all land in the ledger and the read model exactly once.
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
    await stack.start('audit', 'tenant', 'gateway');
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
    const acknowledged: { id: string; position: number }[] = [];
    const create = async (n: number) => {
      const res = await http('POST', '/api/v1/tenants', { body: { slug: `restart-${n}`, name: `R${n}`, plan: 'starter' } });
      if (res.status === 201) acknowledged.push({ id: res.body.tenant.id, position: res.body.position });
      return res.status;
    };
    for (let n = 0; n < 30; n++) expect(await create(n)).toBe(201);

    await nats.stop();
    const during = await create(1000);
    expect(during).toBe(503);
    await nats.start();

    let n = 30;
    for (let i = 0; i < 100 && acknowledged.length < 31; i++) {
      if ((await create(n)) === 201) n++;
      else await sleep(200);
    }
    for (; n < 60; n++) expect(await create(n)).toBe(201);

    const last = Math.max(...acknowledged.map((a) => a.position));
    const read = await http('GET', `/api/v1/tenants?limit=500&consistentWith=${last}`);
    expect(read.status).toBe(200);
    expect(new Set(read.body.items.map((t: { id: string }) => t.id))).toEqual(new Set(acknowledged.map((a) => a.id)));

    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      for (let i = 0; i < 200; i++) {
        const { rows } = await db.query('SELECT coalesce(max(seq), 0)::int AS last FROM audit.ledger');
        if (rows[0].last >= last) break;
        await sleep(50);
      }
      const { rows } = await db.query('SELECT count(*)::int AS n, count(DISTINCT event_id)::int AS ids, max(seq)::int AS last FROM audit.ledger');
      expect(rows[0]).toEqual({ n: last, ids: last, last });
    } finally {
      await db.end();
    }
    const verify = await http('GET', '/api/v1/audit/verify');
    expect(verify.body).toMatchObject({ ok: true, checked: last });
  });
});
