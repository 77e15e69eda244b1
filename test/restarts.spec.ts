import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
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

    // The read model: every acknowledged tenant, each id and slug once (read in pages, asked
    // again after a consistency_timeout while the projection catches up after the restart).
    const last = Math.max(...acknowledged.map((a) => a.position));
    const readAll = async () => {
      const items: { id: string; slug: string }[] = [];
      let cursor: string | null = null;
      do {
        const res: { status: number; body: { items: { id: string; slug: string }[]; nextCursor: string | null } } = await http(
          'GET',
          `/api/v1/tenants?limit=500&consistentWith=${last}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        );
        if (res.status !== 200) return { status: res.status, items };
        items.push(...res.body.items);
        cursor = res.body.nextCursor;
      } while (cursor);
      return { status: 200, items };
    };
    const read = await eventually(readAll, (r) => r.status === 200, { timeoutMs: 60_000, intervalMs: 200, what: `the read model at position ${last}` });
    expect(read.status).toBe(200);
    const readIds = read.items.map((t) => t.id);
    const readSlugs = read.items.map((t) => t.slug);
    expect(readIds.filter((id, i) => readIds.indexOf(id) !== i)).toEqual([]);
    expect(readSlugs.filter((slug, i) => readSlugs.indexOf(slug) !== i)).toEqual([]);
    expect(acknowledged.filter((a) => !readIds.includes(a.id))).toEqual([]);
    expect(readSlugs.filter((slug) => !attempted.has(slug))).toEqual([]);

    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      // The audit consumer catches up after the restart: wait until the ledger holds the last acknowledged position.
      await eventually(
        async () => (await db.query('SELECT coalesce(max(seq), 0)::int AS last FROM audit.ledger')).rows[0].last as number,
        (max) => max >= last,
        { timeoutMs: 60_000, intervalMs: 100, what: `the ledger to reach position ${last}` },
      );
      // Contiguous from 1, each event once, and each tenant created once (no slug twice).
      const { rows } = await db.query(
        `SELECT count(*)::int AS n, count(DISTINCT seq)::int AS seqs, count(DISTINCT event_id)::int AS ids,
                count(DISTINCT (aggregate_type, aggregate_id, aggregate_version))::int AS versions, min(seq)::int AS first, max(seq)::int AS last
           FROM audit.ledger`,
      );
      const max = rows[0].last as number;
      expect(max).toBeGreaterThanOrEqual(last);
      expect(rows[0]).toEqual({ n: max, seqs: max, ids: max, versions: max, first: 1, last: max });
      const { rows: created } = await db.query(
        `SELECT aggregate_id AS id, envelope->'data'->>'slug' AS slug FROM audit.ledger WHERE type = 'tenant.tenant.created' AND seq <= $1`,
        [max],
      );
      const ledgerIds = created.map((r) => r.id as string);
      const ledgerSlugs = created.map((r) => r.slug as string);
      expect(ledgerSlugs.filter((slug, i) => ledgerSlugs.indexOf(slug) !== i)).toEqual([]);
      expect(acknowledged.filter((a) => !ledgerIds.includes(a.id))).toEqual([]);
      for (const a of acknowledged) expect({ id: a.id, slug: ledgerSlugs[ledgerIds.indexOf(a.id)] }).toEqual({ id: a.id, slug: a.slug });

      const verify = await http('GET', `/api/v1/audit/verify?toSeq=${max}`);
      expect(verify.body).toEqual({ ok: true, checked: max, lastSeq: max, incidents: 0 });
    } finally {
      await db.end();
    }
  });
});
