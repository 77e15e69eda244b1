import { parseConfig } from '@keel/config';
import { EventEnvelope, KeelError, newEventId } from '@keel/contracts';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { closeMessaging, ConcurrencyConflict, connectMessaging, CORRELATION_HEADER, ensureEventStream, EventStore, Messaging } from '@keel/messaging';

function event(aggregateId: string, version: number, extra: Partial<EventEnvelope> = {}): EventEnvelope {
  return {
    id: newEventId(),
    type: 'shop.cart.item_added',
    schemaVersion: 1,
    tenantId: 't1',
    aggregateType: 'cart',
    aggregateId,
    aggregateVersion: version,
    occurredAt: new Date().toISOString(),
    actor: { kind: 'system', id: 'event-store-test' },
    correlationId: `corr-${aggregateId}-${version}`,
    data: { n: version },
    ...extra,
  };
}

/** EventStore and the stream against the real NATS JetStream. */
describe('EventStore', () => {
  const env = isolatedEnv('eventstore');
  const config = parseConfig(env);
  const streamOptions = { stream: config.KEEL_STREAM, prefix: config.KEEL_SUBJECT_PREFIX, replicas: 1 };
  let m: Messaging;
  let store: EventStore;

  const messages = async () => (await m.jsm.streams.info(config.KEEL_STREAM)).state.messages;

  beforeAll(async () => {
    m = await connectMessaging(config, 'event-store-test');
    await ensureEventStream(m.jsm, streamOptions);
    store = new EventStore(m);
  });

  afterAll(async () => {
    await closeMessaging(m);
    await cleanupEnv(env);
  });

  it('appends at the right expected position and answers the stream positions', async () => {
    const before = await store.lastPosition();
    const first = await store.append([event('a1', 1)], 0);
    expect(first).toEqual([before + 1]);
    // A decision of two events is one message: both have its position.
    const next = await store.append([event('a1', 2), event('a1', 3)], first[0]!);
    expect(next).toEqual([before + 2, before + 2]);
    expect(await store.lastPosition()).toBe(before + 2);
    expect((await store.readSubject(store.subjectOf(event('a1', 1)))).map((p) => p.position)).toEqual([...first, ...next]);
  });

  it('lands a decision of several events whole or not at all, and reads it back event by event', async () => {
    const [p1] = await store.append([event('multi', 1)], 0);
    const decision = [event('multi', 2), event('multi', 3), event('multi', 4)];
    const count = await messages();
    // Stale: none of the three is stored.
    await expect(store.append(decision, 0)).rejects.toBeInstanceOf(ConcurrencyConflict);
    expect(await messages()).toBe(count);
    const positions = await store.append(decision, p1!);
    expect(await messages()).toBe(count + 1);
    expect(new Set(positions).size).toBe(1);
    const read = await store.readSubject(store.subjectOf(decision[0]!));
    expect(read.map((r) => [r.position, r.event.aggregateVersion])).toEqual([[p1, 1], [positions[0], 2], [positions[0], 3], [positions[0], 4]]);
    expect((await store.readSubject(store.subjectOf(decision[0]!), positions[0]!))).toEqual([]);
    const stored = await store.readPosition(positions[0]!);
    expect(stored?.events).toEqual(decision);
    expect(stored?.event).toEqual(decision[0]);
    // One decision, one aggregate.
    await expect(store.append([event('multi', 5), event('other', 1)], positions[0]!)).rejects.toThrow(/one aggregate/);
  });

  it('publishes on the aggregate subject under the prefix, with the correlation id as a header', async () => {
    const e = event('a2', 1);
    expect(store.subjectOf(e)).toBe(`${config.KEEL_SUBJECT_PREFIX}evt.t1.shop.cart.a2`);
    const [position] = await store.append([e], 0);
    const stored = await store.readPosition(position!);
    expect(stored?.event).toEqual(e);
    expect(stored?.headers?.get(CORRELATION_HEADER)).toBe(e.correlationId);
    expect(await store.readPosition(position! + 1000)).toBeNull();
  });

  it('refuses a stale expected position with ConcurrencyConflict and stores nothing', async () => {
    const [p1] = await store.append([event('a3', 1)], 0);
    const [p2] = await store.append([event('a3', 2)], p1!);
    const count = await messages();

    const stale = store.append([event('a3', 3)], p1!);
    await expect(stale).rejects.toBeInstanceOf(ConcurrencyConflict);
    await expect(store.append([event('a3', 3)], p1!)).rejects.toMatchObject({ subject: store.subjectOf(event('a3', 1)), expected: p1 });
    // 0 means "the aggregate has no events yet": wrong for an aggregate that exists.
    await expect(store.append([event('a3', 3)], 0)).rejects.toBeInstanceOf(ConcurrencyConflict);
    expect(await messages()).toBe(count);
    expect((await store.readSubject(store.subjectOf(event('a3', 1)))).map((p) => p.position)).toEqual([p1, p2]);
  });

  it('stores a retried publish of the same envelope once and answers the same positions', async () => {
    const events = [event('a4', 1), event('a4', 2)];
    const positions = await store.append(events, 0);
    const count = await messages();
    // The ack was lost: the caller retries exactly what it sent.
    await expect(store.append(events, 0)).resolves.toEqual(positions);
    await expect(store.append([events[0]!], 0)).resolves.toEqual([positions[0]]);
    expect(await messages()).toBe(count);
    const read = await store.readSubject(store.subjectOf(events[0]!));
    expect(read.map((p) => p.event.id)).toEqual(events.map((e) => e.id));
  });

  it('retries a publish nobody answers, then reports the log unavailable', async () => {
    // No stream captures this prefix: every publish is refused at once (no responders).
    const orphan = new EventStore({ ...m, prefix: 'nostream.', requestTimeoutMs: 600 });
    const error = await orphan.append([event('a9', 1)], 0).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeelError);
    expect(error).toMatchObject({ code: 'service_unavailable', message: expect.stringMatching(/after ([2-9]|\d\d+) attempts/) });
  });

  it('refuses an invalid envelope before publishing anything of the batch', async () => {
    const count = await messages();
    const last = await store.lastPosition();
    const bad = { ...event('a5', 2), type: 'NotAType', aggregateVersion: 0 } as EventEnvelope;
    const attempt = store.append([event('a5', 1), bad], 0);
    await expect(attempt).rejects.toBeInstanceOf(KeelError);
    await expect(store.append([event('a5', 1), bad], 0)).rejects.toMatchObject({ code: 'validation_failed' });
    const refused = await store.append([bad], 0).then(
      () => undefined,
      (error: KeelError) => error,
    );
    expect(refused?.fields?.map((f) => f.field)).toEqual(expect.arrayContaining(['type', 'aggregateVersion']));
    const noActor = { ...event('a5', 1) } as Partial<EventEnvelope>;
    delete noActor.actor;
    await expect(store.append([noActor as EventEnvelope], 0)).rejects.toMatchObject({ code: 'validation_failed' });
    expect(await messages()).toBe(count);
    expect(await store.lastPosition()).toBe(last);
    expect(await store.readSubject(store.subjectOf(event('a5', 1)))).toEqual([]);
  });

  it('reads exactly one aggregate back, in order, after a given position', async () => {
    const x = 'rx';
    const y = 'ry';
    const px: number[] = [];
    const py: number[] = [];
    const xEvents = [1, 2, 3, 4].map((v) => event(x, v));
    for (let v = 1; v <= 4; v++) {
      px.push(...(await store.append([xEvents[v - 1]!], px[px.length - 1] ?? 0)));
      py.push(...(await store.append([event(y, v)], py[py.length - 1] ?? 0)));
    }
    // Another tenant with the same aggregate id is another subject.
    await store.append([event(x, 1, { tenantId: 't2' })], 0);

    const all = await store.readSubject(store.subjectOf(xEvents[0]!));
    expect(all.map((p) => p.position)).toEqual(px);
    expect(all.map((p) => p.event)).toEqual(xEvents);

    const after = await store.readSubject(store.subjectOf(xEvents[0]!), px[1]);
    expect(after.map((p) => p.event.aggregateVersion)).toEqual([3, 4]);
    expect(after.map((p) => p.position)).toEqual(px.slice(2));
    expect(await store.readSubject(store.subjectOf(xEvents[0]!), px[3])).toEqual([]);
    expect(await store.readSubject(store.subjectOf(event('nobody', 1)))).toEqual([]);
  });

  it('ensureEventStream is idempotent and keeps what the stream holds', async () => {
    const before = await m.jsm.streams.info(config.KEEL_STREAM);
    await ensureEventStream(m.jsm, streamOptions);
    await Promise.all([ensureEventStream(m.jsm, streamOptions), ensureEventStream(m.jsm, streamOptions)]);
    const after = await m.jsm.streams.info(config.KEEL_STREAM);
    expect(after.state.messages).toBe(before.state.messages);
    expect(after.state.last_seq).toBe(before.state.last_seq);
    expect(after.config).toMatchObject({
      subjects: [`${config.KEEL_SUBJECT_PREFIX}evt.>`],
      deny_delete: true,
      deny_purge: true,
      allow_direct: true,
      duplicate_window: 120_000_000_000,
    });
  });

  it('brings a drifted duplicate window back to two minutes', async () => {
    const info = await m.jsm.streams.info(config.KEEL_STREAM);
    await m.jsm.streams.update(config.KEEL_STREAM, { ...info.config, duplicate_window: 5_000_000_000 });
    expect((await m.jsm.streams.info(config.KEEL_STREAM)).config.duplicate_window).toBe(5_000_000_000);
    await ensureEventStream(m.jsm, streamOptions);
    expect((await m.jsm.streams.info(config.KEEL_STREAM)).config.duplicate_window).toBe(120_000_000_000);
  });

  it('refuses message deletion and purge', async () => {
    const [position] = await store.append([event('keep', 1)], 0);
    const count = await messages();
    await expect(m.jsm.streams.deleteMessage(config.KEEL_STREAM, position!)).rejects.toThrow(/delete not permitted/);
    await expect(m.jsm.streams.deleteMessage(config.KEEL_STREAM, position!, false)).rejects.toThrow(/delete not permitted/);
    await expect(m.jsm.streams.purge(config.KEEL_STREAM)).rejects.toThrow(/purge not permitted/);
    await expect(m.jsm.streams.purge(config.KEEL_STREAM, { filter: store.subjectOf(event('keep', 1)) })).rejects.toThrow(/purge not permitted/);
    expect(await messages()).toBe(count);
    expect((await store.readPosition(position!))?.event).toMatchObject({ aggregateId: 'keep' });
  });

  it('appends facts pipelined, each once: a retried fact answers its first position', async () => {
    const facts = Array.from({ length: 300 }, (_, i) => event(`fact-${i % 7}`, 1, { type: 'shop.usage.recorded', aggregateType: 'usage', data: { i } }));
    const before = await messages();
    const positions = await store.appendFacts(facts, 64);
    expect(positions).toHaveLength(300);
    expect(new Set(positions).size).toBe(300);
    expect(await messages()).toBe(before + 300);
    // No optimistic check: seven facts on one subject, in any order of arrival.
    expect((await store.readSubject(store.subjectOf(facts[0]!))).length).toBeGreaterThanOrEqual(300 / 7 - 1);
    const again = await store.appendFacts([facts[5]!, facts[250]!]);
    expect(again).toEqual([positions[5], positions[250]]);
    expect(await messages()).toBe(before + 300);
    for (const i of [0, 99, 299]) expect((await store.readPosition(positions[i]!))?.event).toEqual(facts[i]);
    await expect(store.appendFacts([{ ...facts[0]!, id: 'not-a-uuid' }])).rejects.toMatchObject({ code: 'validation_failed' });
  });
});
