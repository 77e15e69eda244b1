import { Client } from 'pg';
import { parseConfig } from '@keel/config';
import { EventEnvelope, newEventId, VerifyResult } from '@keel/contracts';
import { connectMessaging, EventStore, Messaging, RpcClient } from '@keel/messaging';
import { cleanupEnv, eventually, isolatedEnv, Stack } from '@keel/testing';

const EVENTS = 600;

function event(aggregateId: string, version: number): EventEnvelope {
  return {
    id: newEventId(), type: 'ledgertest.thing.noted', schemaVersion: 1, tenantId: aggregateId, aggregateType: 'thing',
    aggregateId, aggregateVersion: version, occurredAt: new Date().toISOString(), actor: { kind: 'system', id: 'replica-test' },
    correlationId: `c-${version}`, data: { n: version },
  };
}

/** Two audit replicas: one writes the ledger, the other takes over when it dies; nothing is lost or doubled. */
describe('audit replicas', () => {
  const env = isolatedEnv('replicas');
  const first = new Stack(env);
  const second = new Stack(env);
  let m: Messaging;
  let db: Client;

  beforeAll(async () => {
    await first.start('audit');
    await second.start('audit');
    m = await connectMessaging(parseConfig(env), 'replica-test');
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
  });

  afterAll(async () => {
    await db?.end();
    await m?.nc.close();
    await second.stop();
    await first.stop();
    await cleanupEnv(env);
  });

  const ledger = async () => (await db.query('SELECT count(*)::int AS n, count(DISTINCT seq)::int AS seqs, coalesce(max(seq), 0)::int AS last FROM audit.ledger')).rows[0];
  const leaderOf = async () => {
    for (const stack of [first, second]) {
      const ready = await (await fetch(`${stack.opsUrl('audit')}/ready`)).json();
      if (ready.checks.ledger.detail.leader) return stack;
    }
    return undefined;
  };

  it('has exactly one active writer, and the standby takes over from a killed leader', async () => {
    const store = new EventStore(m);
    const aggregate = newEventId();
    let position = 0;
    for (let v = 1; v <= EVENTS / 2; v++) [position] = (await store.append([event(aggregate, v)], position)) as [number];
    await eventually(ledger, (l) => l.last >= position, { timeoutMs: 60_000, what: `the ledger to reach ${position}` });
    const leader = await leaderOf();
    expect(leader).toBeDefined();
    const standby = leader === first ? second : first;
    expect((await (await fetch(`${standby.opsUrl('audit')}/ready`)).json()).checks.ledger.detail.leader).toBe(false);

    await leader!.kill('audit', 'SIGKILL');
    for (let v = EVENTS / 2 + 1; v <= EVENTS; v++) [position] = (await store.append([event(aggregate, v)], position)) as [number];
    // The standby takes the lock over and catches up: wait for the ledger to reach the end, then check it whole.
    await eventually(ledger, (l) => l.last >= position, { timeoutMs: 60_000, what: `the standby to bring the ledger to ${position}` });

    expect(await ledger()).toEqual({ n: EVENTS, seqs: EVENTS, last: EVENTS });
    expect((await (await fetch(`${standby.opsUrl('audit')}/ready`)).json()).checks.ledger.detail.leader).toBe(true);
    const verify = await new RpcClient(m).request<VerifyResult>('qry.audit.verify', {});
    expect(verify).toEqual({ ok: true, checked: EVENTS, lastSeq: EVENTS, incidents: 0 });
  });
});
