import { Client } from 'pg';
import { connect, NatsConnection } from 'nats';
import { fold } from '@keel/event-sourcing';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';
import { tenantDecider } from '../services/tenant/src/tenant/tenant.decider';

const COMMANDS = 2_000;
const TENANTS = 400;
const CONCURRENCY = 16;

/**
 * Invariant 1 of ARCHITECTURE.md §9: the audit service is SIGKILLed in the middle of 2,000
 * tenant commands and restarted; every event lands in the ledger exactly once, contiguous,
 * the chain verifies, and the tenant read model equals a fold of the ledger.
 */
describe('ledger across a SIGKILL of the audit service', () => {
  const env = isolatedEnv('crash');
  const stack = new Stack(env);
  let nc: NatsConnection;
  let db: Client;

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    nc = await connect({ servers: env.NATS_URL });
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
  });

  afterAll(async () => {
    await db?.end();
    await nc?.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('loses nothing, applies nothing twice, and the read model equals a fold of the ledger', async () => {
    const http = httpClient(stack.gatewayUrl, stack.token);
    const ids: string[] = [];
    let issued = 0;
    let done = 0;
    let lastPosition = 0;
    const next = async (): Promise<void> => {
      const n = issued++;
      if (n >= COMMANDS) return;
      let res;
      if (n < TENANTS) {
        res = await http('POST', '/api/v1/tenants', { body: { slug: `crash-${n}`, name: `Crash ${n}`, plan: 'starter' } });
        if (res.status === 201) ids.push(res.body.tenant.id);
      } else {
        const id = ids[n % ids.length]!;
        const kind = n % 3;
        res =
          kind === 0
            ? await http('PATCH', `/api/v1/tenants/${id}/settings`, { body: { sessionTimeoutMinutes: 5 + (n % 1000) } })
            : kind === 1
              ? await http('PATCH', `/api/v1/tenants/${id}/plan`, { body: { plan: (['starter', 'professional', 'enterprise'] as const)[n % 3] } })
              : await http('PATCH', `/api/v1/tenants/${id}/settings`, { body: { maxConcurrentSessions: 1 + (n % 50) } });
      }
      expect([200, 201]).toContain(res.status);
      lastPosition = Math.max(lastPosition, res.body.position);
      done++;
      return next();
    };

    const load = Promise.all(Array.from({ length: CONCURRENCY }, next));
    while (done < COMMANDS * 0.3) await new Promise((r) => setTimeout(r, 20));
    await stack.kill('audit', 'SIGKILL');
    while (done < COMMANDS * 0.6) await new Promise((r) => setTimeout(r, 20));
    await stack.startOne('audit');
    await load;
    expect(done).toBe(COMMANDS);

    const streamLast = (await (await nc.jetstreamManager()).streams.info(env.KEEL_STREAM!)).state.last_seq;
    expect(streamLast).toBeGreaterThanOrEqual(lastPosition);
    // The restarted audit service catches up on the stream: wait until the ledger reaches its end.
    await eventually(
      async () => Number((await db.query('SELECT max(seq) AS max FROM audit.ledger')).rows[0].max),
      (max) => max >= streamLast,
      { timeoutMs: 120_000, intervalMs: 100, what: `the ledger to reach position ${streamLast}` },
    );
    const { rows: stats } = await db.query(
      'SELECT count(*)::int AS n, count(DISTINCT seq)::int AS seqs, count(DISTINCT event_id)::int AS ids, min(seq)::int AS first, max(seq)::int AS last FROM audit.ledger',
    );
    expect(stats[0]).toEqual({ n: streamLast, seqs: streamLast, ids: streamLast, first: 1, last: streamLast });

    const verify = await http('GET', '/api/v1/audit/verify');
    expect(verify.body).toEqual({ ok: true, checked: streamLast, lastSeq: streamLast, incidents: 0 });

    // The read model must have applied the whole stream before it is compared with the ledger
    // (asked again after a consistency_timeout while the projection catches up).
    const caughtUp = await eventually(
      () => http('GET', `/api/v1/tenants/${ids[0]}?consistentWith=${streamLast}`),
      (r) => r.status === 200,
      { timeoutMs: 60_000, intervalMs: 200, what: `the tenant read model at position ${streamLast}` },
    );
    expect(caughtUp.status).toBe(200);
    const { rows: ledger } = await db.query(`SELECT envelope FROM audit.ledger WHERE context = 'tenant' ORDER BY seq`);
    const byTenant = new Map<string, { type: string; data: Record<string, unknown>; occurredAt: string }[]>();
    for (const { envelope } of ledger) {
      const list = byTenant.get(envelope.aggregateId) ?? [];
      list.push({ type: envelope.type, data: envelope.data, occurredAt: envelope.occurredAt });
      byTenant.set(envelope.aggregateId, list);
    }
    const { rows: readModel } = await db.query('SELECT * FROM tenant.tenants ORDER BY id');
    expect(readModel).toHaveLength(byTenant.size);
    for (const row of readModel) {
      const events = byTenant.get(row.id)!;
      const state = fold(tenantDecider as never, events as never) as Record<string, unknown>;
      expect({
        slug: row.slug, name: row.name, plan: row.plan, quotas: row.quotas, settings: row.settings, status: row.status,
        suspendedReason: row.suspended_reason, version: row.version, updatedAt: row.updated_at.toISOString(),
      }).toEqual({
        slug: state.slug, name: state.name, plan: state.plan, quotas: state.quotas, settings: state.settings, status: state.status,
        suspendedReason: state.suspendedReason, version: events.length, updatedAt: state.updatedAt,
      });
    }
  });
});
