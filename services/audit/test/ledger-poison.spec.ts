import { Client } from 'pg';
import { headers as natsHeaders } from 'nats';
import { connectMessaging, EventStore, Messaging, RpcClient } from '@keel/messaging';
import { parseConfig } from '@keel/config';
import { EventEnvelope, LedgerEntry, newEventId, Page, VerifyResult } from '@keel/contracts';
import { cleanupEnv, eventually, isolatedEnv, Stack } from '@keel/testing';

function event(aggregateId: string, version: number, data: Record<string, unknown> = { n: version }): EventEnvelope {
  return {
    id: newEventId(),
    type: 'ledgertest.thing.noted',
    schemaVersion: 1,
    tenantId: aggregateId,
    aggregateType: 'thing',
    aggregateId,
    aggregateVersion: version,
    occurredAt: new Date().toISOString(),
    actor: { kind: 'system', id: 'poison-test' },
    correlationId: `c-${version}`,
    data,
  };
}

/**
 * Whatever reaches the stream, the ledger appends it, chains it and goes on: a valid envelope whose
 * strings hold NUL and unpaired surrogates is kept verbatim; bytes that are not UTF-8, text that is not
 * JSON, JSON that is not an envelope and JSON nested too deep to canonicalise are kept as incidents.
 */
describe('ledger: no content of a message can stop it', () => {
  const env = isolatedEnv('ledger-poison');
  const stack = new Stack(env, { KEEL_CHECKPOINT_EVERY: '3', KEEL_CHECKPOINT_INTERVAL_MS: '600000' });
  let m: Messaging;
  let rpc: RpcClient;
  let admin: Client;
  const aggregate = newEventId();
  let poisonId = '';
  const published: number[] = [];

  const verify = (range: { fromSeq?: number; toSeq?: number } = {}) => rpc.request<VerifyResult>('qry.audit.verify', range);
  const ledgerCount = async () => (await admin.query('SELECT count(*)::int AS n FROM audit.ledger')).rows[0].n as number;

  beforeAll(async () => {
    await stack.start('audit');
    m = await connectMessaging(parseConfig(env), 'ledger-poison-test');
    rpc = new RpcClient(m);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    const store = new EventStore(m);
    const subject = store.subjectOf({ tenantId: aggregate, type: 'ledgertest.x.x', aggregateType: 'thing', aggregateId: aggregate });
    const raw = async (payload: string | Uint8Array, msgID?: string) => {
      const h = natsHeaders();
      const ack = await m.js.publish(subject, typeof payload === 'string' ? new TextEncoder().encode(payload) : payload, { ...(msgID ? { msgID } : {}), headers: h });
      published.push(ack.seq);
    };
    // 1. A valid envelope, written as text so the escapes reach the stream as they are.
    const ok = event(aggregate, 1, { name: 'PLACEHOLDER_A', note: 'PLACEHOLDER_B' });
    ok.actor.userAgent = 'PLACEHOLDER_C';
    poisonId = ok.id;
    await raw(
      JSON.stringify(ok)
        .replace('"PLACEHOLDER_A"', '"a\\u0000b"')
        .replace('"PLACEHOLDER_B"', '"lone \\ud800 high and \\udc00 low"')
        .replace('"PLACEHOLDER_C"', '"agent\\u0000"'),
      ok.id,
    );
    // 2. Not UTF-8. 3. Not JSON. 4. JSON, not an envelope. 5. Nested too deep to canonicalise.
    await raw(new Uint8Array([0xff, 0xfe, 0x00, 0xc3]));
    await raw('{"id": "not closed');
    await raw('{"hello":"world","nul":"\\u0000"}');
    await raw('['.repeat(100_000) + ']'.repeat(100_000));
    // 6. Ordinary events after all of that.
    for (let v = 2; v <= 4; v++) {
      const e = event(aggregate, v);
      await raw(JSON.stringify(e), e.id);
    }
    // 7. JSON whose zod complaint quotes a key holding NUL; an envelope behind a UTF-8 byte-order mark.
    const keyed = event(aggregate, 99);
    await raw(JSON.stringify({ ...keyed, actor: { ...keyed.actor, PLACEHOLDER_K: 1 } }).replace('"PLACEHOLDER_K"', '"x\\u0000y"'));
    const bom = event(aggregate, 98);
    await raw(new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode(JSON.stringify(bom))]));
    // 8. A decision of two events: one message, one entry.
    const [decision] = await store.append([event(aggregate, 5), event(aggregate, 6)], published[published.length - 1]!);
    published.push(decision!);
    await eventually(ledgerCount, (n) => n >= published.length, { timeoutMs: 60_000, intervalMs: 100, what: 'the ledger to hold every published message' });
  });

  afterAll(async () => {
    await admin?.end();
    await m?.nc.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('appends every message in stream order, the ones after the poison included', async () => {
    const { rows } = await admin.query('SELECT seq::int, problem, payload IS NOT NULL AS raw FROM audit.ledger ORDER BY seq');
    expect(rows.map((r) => r.seq)).toEqual(published);
    expect(rows.map((r) => r.problem === null)).toEqual([true, false, false, false, false, true, true, true, false, false, true]);
    expect(rows.map((r) => r.raw)).toEqual([false, true, true, false, true, false, false, false, false, true, false]);
    expect(rows[8].problem).toMatch(/not a valid event envelope: actor: Unrecognized key/);
    expect(rows[8].problem).not.toContain('\u0000');
    expect(rows[9].problem).toMatch(/not JSON/);
    expect(rows[1].problem).toMatch(/not UTF-8/);
    expect(rows[2].problem).toMatch(/not JSON/);
    expect(rows[3].problem).toMatch(/not a valid event envelope/);
    expect(rows[4].problem).toMatch(/could not hold it as JSON/);
  });

  it('verifies the whole chain, counting the incidents, and finds a change to an incident entry', async () => {
    expect(await verify()).toEqual({ ok: true, checked: published.length, lastSeq: published[published.length - 1], incidents: 6 });
    await admin.query('ALTER TABLE audit.ledger DISABLE TRIGGER ledger_append_only');
    try {
      await admin.query(`UPDATE audit.ledger SET payload = '\\x00'::bytea WHERE seq = $1`, [published[1]]);
      const tampered = await verify();
      expect(tampered).toMatchObject({ ok: false, firstInvalidSeq: published[1] });
    } finally {
      await admin.query(`UPDATE audit.ledger SET payload = '\\xfffe00c3'::bytea WHERE seq = $1`, [published[1]]);
      await admin.query('ALTER TABLE audit.ledger ENABLE TRIGGER ledger_append_only');
    }
    expect(await verify()).toMatchObject({ ok: true, incidents: 6 });
  });

  it('keeps the valid envelope exactly as published: NUL and lone surrogates included', async () => {
    const page = await rpc.request<Page<LedgerEntry>>('qry.audit.events', { aggregateId: aggregate, order: 'asc', limit: 10 });
    const first = page.items.find((e) => e.seq === published[0])!;
    expect(first.problem).toBeUndefined();
    const data = (first.event as EventEnvelope).data;
    expect(data.name).toBe('a\u0000b');
    expect(data.note).toBe('lone \ud800 high and \udc00 low');
    expect((first.event as EventEnvelope).id).toBe(poisonId);
    expect((first.event as EventEnvelope).actor.userAgent).toBe('agent\u0000');
    // The indexed columns hold what a text column can; the envelope is the record.
    const { rows } = await admin.query('SELECT envelope::text AS text FROM audit.ledger WHERE seq = $1', [published[0]]);
    expect(rows[0].text).toContain('"a\\u0000b"');
  });

  it('lists the incidents for an operator, with the bytes of what was not JSON', async () => {
    const page = await rpc.request<Page<LedgerEntry>>('qry.audit.incidents', {});
    expect(page.items.map((e) => e.seq)).toEqual([...published.slice(1, 5), published[8], published[9]]);
    // The byte-order mark is kept: the entry is the bytes as published.
    expect(Buffer.from((page.items[5] as { payload: string }).payload, 'base64').subarray(0, 3)).toEqual(Buffer.from([0xef, 0xbb, 0xbf]));
    const notUtf8 = page.items[0]!;
    expect(notUtf8.problem).toMatch(/not UTF-8/);
    expect(Buffer.from((notUtf8 as { payload: string }).payload, 'base64')).toEqual(Buffer.from([0xff, 0xfe, 0x00, 0xc3]));
    expect(page.items[2]!.event).toEqual({ hello: 'world', nul: '\u0000' });
  });

  it('replays only envelopes to projections, a decision of several events as its events in order', async () => {
    const page = await rpc.request<{ events: { position: number; event: EventEnvelope }[] }>('qry.audit.replay', { afterSeq: 0, limit: 100 });
    const decision = published[published.length - 1]!;
    expect(page.events.map((e) => e.position)).toEqual([published[0], ...published.slice(5, 8), decision, decision]);
    expect(page.events.slice(-2).map((e) => e.event.aggregateVersion)).toEqual([5, 6]);
  });

  it('keeps a decision of several events as one entry, searchable by its aggregate', async () => {
    const decision = published[published.length - 1]!;
    const page = await rpc.request<Page<LedgerEntry>>('qry.audit.events', { aggregateId: aggregate, order: 'desc', limit: 1 });
    const entry = page.items[0]!;
    expect(entry.seq).toBe(decision);
    expect(entry.problem).toBeUndefined();
    expect((entry as { events: EventEnvelope[] }).events.map((e) => e.aggregateVersion)).toEqual([5, 6]);
    expect((entry.event as EventEnvelope).aggregateVersion).toBe(5);
  });
});
