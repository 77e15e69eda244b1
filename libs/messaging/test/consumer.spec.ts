import { parseConfig } from '@keel/config';
import { EventEnvelope, newEventId, subjects } from '@keel/contracts';
import { createLogger } from '@keel/observability';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import {
  closeMessaging,
  connectMessaging,
  DeadLetter,
  DeliveredEvent,
  durableName,
  DurableConsumerOptions,
  DurableEventConsumer,
  ensureEventStream,
  EventStore,
  Messaging,
  PermanentEventError,
} from '@keel/messaging';

const logger = createLogger('consumer-test', 'silent');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** What a handler has made durable: the positions it applied, in order, and its checkpoint. */
class Sink {
  position = 0;
  applied: number[] = [];
  by: string[] = [];
  commit(batch: DeliveredEvent[], who = 'handler'): void {
    for (const d of batch) {
      this.applied.push(d.position);
      this.by.push(who);
    }
    this.position = batch[batch.length - 1]!.position;
  }
}

/** DurableEventConsumer against the real NATS JetStream. */
describe('DurableEventConsumer', () => {
  const env = isolatedEnv('consumer');
  const config = parseConfig(env);
  let m: Messaging;
  let m2: Messaging;
  let store: EventStore;
  const consumers: DurableEventConsumer[] = [];
  const heads = new Map<string, { position: number; version: number }>();

  /** Appends `count` events of one tenant, round-robin over three aggregates. */
  async function publish(tenant: string, count: number): Promise<{ positions: number[]; events: EventEnvelope[] }> {
    const positions: number[] = [];
    const events: EventEnvelope[] = [];
    for (let i = 0; i < count; i++) {
      const aggregateId = `${tenant}-${i % 3}`;
      const head = heads.get(aggregateId) ?? { position: 0, version: 0 };
      const e: EventEnvelope = {
        id: newEventId(),
        type: 'shop.cart.item_added',
        schemaVersion: 1,
        tenantId: tenant,
        aggregateType: 'cart',
        aggregateId,
        aggregateVersion: head.version + 1,
        occurredAt: new Date().toISOString(),
        actor: { kind: 'system', id: 'consumer-test' },
        correlationId: `c-${i}`,
        data: { i },
      };
      const [position] = await store.append([e], head.position);
      heads.set(aggregateId, { position: position!, version: head.version + 1 });
      positions.push(position!);
      events.push(e);
    }
    return { positions, events };
  }

  function consumer(
    tenant: string,
    o: Partial<DurableConsumerOptions> & Pick<DurableConsumerOptions, 'handle' | 'position'>,
    messaging = m,
  ): DurableEventConsumer {
    const c = new DurableEventConsumer(messaging, {
      name: durableName(config.KEEL_SUBJECT_PREFIX, `test-${tenant}`),
      filterSubject: subjects.tenantEvents(config.KEEL_SUBJECT_PREFIX, tenant),
      logger,
      ...o,
    });
    consumers.push(c);
    return c;
  }

  beforeAll(async () => {
    m = await connectMessaging(config, 'consumer-test');
    m2 = await connectMessaging(config, 'consumer-test-2');
    await ensureEventStream(m.jsm, { stream: config.KEEL_STREAM, prefix: config.KEEL_SUBJECT_PREFIX, replicas: 1 });
    store = new EventStore(m);
  });

  afterAll(async () => {
    await Promise.all(consumers.map((c) => c.stop().catch(() => undefined)));
    await closeMessaging(m);
    await closeMessaging(m2);
    await cleanupEnv(env);
  });

  it('delivers in order, in batches, settles a batch only once handle resolved, and resumes at position() after a restart', async () => {
    const tenant = 'ordered';
    const name = durableName(config.KEEL_SUBJECT_PREFIX, `test-${tenant}`);
    const first = await publish(tenant, 24);
    const sink = new Sink();
    const batches: number[][] = [];
    const secondBatch = deferred();
    const thirdBatch = deferred();
    let crashed = false;
    const a = consumer(tenant, {
      batchSize: 8,
      position: async () => sink.position,
      handle: async (batch) => {
        if (crashed) throw new Error('the process is dying');
        batches.push(batch.map((d) => d.position));
        if (batches.length === 1) {
          // Hold the first batch until the 8 events after it have arrived, so the next batch is
          // full: the server has delivered them (the consumer's delivered sequence), and a round
          // trip on the same connection (flush) comes back only after what the server sent before.
          const eighthAfter = first.positions[batch.length + 7]!;
          await until(
            async () => (await m.jsm.consumers.info(config.KEEL_STREAM, name)).delivered.stream_seq >= eighthAfter,
            'the 8 events after the first batch to be delivered',
          );
          await m.nc.flush();
        }
        if (batches.length === 2) await secondBatch.promise;
        if (batches.length === 3) {
          await thirdBatch.promise;
          crashed = true;
          throw new Error('the process died before committing');
        }
        sink.commit(batch, 'a');
      },
    });
    a.start();

    await until(() => batches.length === 2, 'the second batch');
    expect(batches[1]).toHaveLength(8);
    const ackFloor = async () => (await m.jsm.consumers.info(config.KEEL_STREAM, name)).ack_floor.stream_seq;
    const firstEnd = batches[0]![batches[0]!.length - 1]!;
    await until(async () => (await ackFloor()) === firstEnd, 'the first batch to be acked');
    // While handle has not resolved, the second batch is delivered but not settled.
    await sleep(300);
    expect(await ackFloor()).toBe(firstEnd);
    expect((await m.jsm.consumers.info(config.KEEL_STREAM, name)).num_ack_pending).toBeGreaterThanOrEqual(8);
    expect(sink.position).toBe(firstEnd);

    secondBatch.resolve();
    const secondEnd = batches[1]![7]!;
    await until(async () => (await ackFloor()) === secondEnd, 'the second batch to be acked');
    await until(() => batches.length === 3, 'the third batch');

    // Stop while the third batch is in the handler, which then fails without committing.
    const stopping = a.stop();
    thirdBatch.resolve();
    await stopping;
    expect(a.health().running).toBe(false);
    expect(sink.position).toBe(secondEnd);

    const second = await publish(tenant, 6);
    const delivered: number[] = [];
    const b = consumer(tenant, {
      batchSize: 8,
      position: async () => sink.position,
      handle: async (batch) => {
        delivered.push(...batch.map((d) => d.position));
        sink.commit(batch, 'b');
      },
    });
    b.start();
    const all = [...first.positions, ...second.positions];
    await until(() => sink.applied.length >= all.length, 'every event');
    await sleep(200);

    expect(delivered[0]).toBe(first.positions[first.positions.indexOf(secondEnd) + 1]);
    expect(sink.applied).toEqual(all);
    expect(batches.flat()).toEqual(first.positions.slice(0, batches.flat().length));
    for (const batch of batches) expect(batch.length).toBeLessThanOrEqual(8);
    expect(b.health()).toMatchObject({ running: true, leader: true, healthy: true, deadLetters: 0 });
    await b.stop();
  });

  it('retries a transient failure without skipping: every event is applied exactly once, in order', async () => {
    const tenant = 'transient';
    const { positions } = await publish(tenant, 20);
    const failing = positions[7]!;
    const sink = new Sink();
    const deadLetter = jest.fn(async (_l: DeadLetter) => undefined);
    let failures = 0;
    const c = consumer(tenant, {
      batchSize: 5,
      position: async () => sink.position,
      deadLetter,
      handle: async (batch) => {
        // All or nothing, like a transaction.
        if (failures < 2 && batch.some((d) => d.position === failing)) {
          failures++;
          throw new Error('connection reset');
        }
        sink.commit(batch);
      },
    });
    c.start();
    await until(() => sink.applied.length >= positions.length, 'every event');
    await sleep(200);

    expect(failures).toBe(2);
    expect(sink.applied).toEqual(positions);
    for (let i = 1; i < sink.applied.length; i++) expect(sink.applied[i]!).toBeGreaterThan(sink.applied[i - 1]!);
    expect(deadLetter).not.toHaveBeenCalled();
    expect(c.health()).toMatchObject({ running: true, healthy: true, deadLetters: 0 });
    expect(c.health().lastError).toBeUndefined();
    await c.stop();
  });

  it('dead-letters an event whose handler throws PermanentEventError and goes on with the rest', async () => {
    const tenant = 'poison';
    const { positions, events } = await publish(tenant, 12);
    const poison = positions[4]!;
    const sink = new Sink();
    const letters: DeadLetter[] = [];
    const deadLetter = jest.fn(async (l: DeadLetter) => {
      letters.push(l);
      sink.position = l.position;
    });
    const c = consumer(tenant, {
      batchSize: 4,
      position: async () => sink.position,
      deadLetter,
      handle: async (batch) => {
        if (batch.some((d) => d.position === poison)) throw new PermanentEventError(`event at ${poison} refers to nothing`);
        sink.commit(batch);
      },
    });
    c.start();
    const rest = positions.filter((p) => p !== poison);
    await until(() => sink.applied.length >= rest.length, 'the other events');
    await sleep(200);

    expect(sink.applied).toEqual(rest);
    expect(deadLetter).toHaveBeenCalledTimes(1);
    expect(letters[0]).toMatchObject({
      position: poison,
      subject: store.subjectOf(events[4]!),
      reason: `event at ${poison} refers to nothing`,
    });
    expect(JSON.parse(letters[0]!.payload)).toEqual(events[4]);
    expect(c.health()).toMatchObject({ running: true, healthy: false, deadLetters: 1 });
    await c.stop();
  });

  it('dead-letters a message that is not a valid envelope without calling the handler for it', async () => {
    const tenant = 'garbage';
    const before = await publish(tenant, 2);
    const subject = `${config.KEEL_SUBJECT_PREFIX}evt.${tenant}.shop.cart.x`;
    const bad = await m.js.publish(subject, new TextEncoder().encode('{"id":"not-an-envelope"}'));
    const after = await publish(tenant, 2);
    const sink = new Sink();
    const seen: number[] = [];
    const deadLetter = jest.fn(async (l: DeadLetter) => {
      sink.position = l.position;
    });
    const c = consumer(tenant, {
      position: async () => sink.position,
      deadLetter,
      handle: async (batch) => {
        seen.push(...batch.map((d) => d.position));
        sink.commit(batch);
      },
    });
    c.start();
    const good = [...before.positions, ...after.positions];
    await until(() => sink.applied.length >= good.length, 'the valid events');
    await sleep(200);
    expect(sink.applied).toEqual(good);
    expect(seen).not.toContain(bad.seq);
    expect(deadLetter).toHaveBeenCalledTimes(1);
    expect(deadLetter.mock.calls[0]![0]).toMatchObject({ position: bad.seq, subject, payload: '{"id":"not-an-envelope"}' });
    expect(deadLetter.mock.calls[0]![0].reason).toMatch(/^invalid event envelope/);
    expect(c.health()).toMatchObject({ healthy: false, deadLetters: 1 });
    await c.stop();
  });

  it('recovers when its durable consumer is deleted under it, resuming at position()', async () => {
    const tenant = 'deleted';
    const name = durableName(config.KEEL_SUBJECT_PREFIX, `test-${tenant}`);
    const first = await publish(tenant, 5);
    const sink = new Sink();
    const c = consumer(tenant, { position: async () => sink.position, handle: async (batch) => sink.commit(batch) });
    c.start();
    await until(() => sink.applied.length >= 5, 'the first events');
    await m.jsm.consumers.delete(config.KEEL_STREAM, name);
    const second = await publish(tenant, 5);
    await until(() => sink.applied.length >= 10, 'the events published after the deletion', 15_000);
    await sleep(200);
    expect(sink.applied).toEqual([...first.positions, ...second.positions]);
    await c.stop();
  });

  it('can be stopped and started again, going on where its handler left off', async () => {
    const tenant = 'restart';
    const first = await publish(tenant, 4);
    const sink = new Sink();
    const c = consumer(tenant, { position: async () => sink.position, handle: async (batch) => sink.commit(batch) });
    c.start();
    await until(() => sink.applied.length >= 4, 'the first events');
    await c.stop();
    expect(c.health()).toMatchObject({ running: false, leader: false, healthy: false });
    const second = await publish(tenant, 4);
    await sleep(200);
    expect(sink.applied).toEqual(first.positions);
    c.start();
    await until(() => sink.applied.length >= 8, 'the events published while stopped');
    await sleep(200);
    expect(sink.applied).toEqual([...first.positions, ...second.positions]);
    expect(c.health()).toMatchObject({ running: true, leader: true, healthy: true });
    await c.stop();
  });

  it('dead-letters an event that keeps failing after maxDeliver attempts', async () => {
    const tenant = 'exhausted';
    const { positions } = await publish(tenant, 6);
    const broken = positions[2]!;
    const sink = new Sink();
    const deadLetter = jest.fn(async (l: DeadLetter) => {
      sink.position = l.position;
    });
    let alone = 0;
    const c = consumer(tenant, {
      batchSize: 4,
      maxDeliver: 3,
      position: async () => sink.position,
      deadLetter,
      handle: async (batch) => {
        if (batch.length === 1 && batch[0]!.position === broken) alone++;
        if (batch.some((d) => d.position === broken)) throw new Error('still broken');
        sink.commit(batch);
      },
    });
    c.start();
    const rest = positions.filter((p) => p !== broken);
    await until(() => sink.applied.length >= rest.length, 'the other events');
    await sleep(200);

    expect(sink.applied).toEqual(rest);
    expect(alone).toBe(3);
    expect(deadLetter).toHaveBeenCalledTimes(1);
    expect(deadLetter.mock.calls[0]![0]).toMatchObject({ position: broken, reason: 'still broken' });
    expect(c.health()).toMatchObject({ healthy: false, deadLetters: 1 });
    await c.stop();
  });

  it('never skips an event when it has no deadLetter: it keeps retrying and reports the error', async () => {
    const tenant = 'stuck';
    const { positions } = await publish(tenant, 6);
    const stuck = positions[2]!;
    const sink = new Sink();
    let broken = true;
    let rounds = 0; // each round ends with the event tried on its own
    const c = consumer(tenant, {
      batchSize: 4,
      maxDeliver: 2,
      position: async () => sink.position,
      handle: async (batch) => {
        if (broken && batch.some((d) => d.position === stuck)) {
          if (batch.length === 1) rounds++;
          throw new PermanentEventError('the ledger cannot take it');
        }
        sink.commit(batch);
      },
    });
    c.start();
    await until(() => rounds >= 3, 'more attempts than maxDeliver');

    expect(sink.applied).toEqual(positions.slice(0, 2));
    const health = c.health();
    expect(health).toMatchObject({ running: true, healthy: false, deadLetters: 0 });
    expect(health.lastError).toContain(`position ${stuck}`);
    expect(health.lastError).toContain('the ledger cannot take it');

    broken = false;
    await until(() => sink.applied.length >= positions.length, 'the rest once the handler recovers');
    await sleep(200);
    expect(sink.applied).toEqual(positions);
    expect(c.health()).toMatchObject({ healthy: true, deadLetters: 0 });
    expect(c.health().lastError).toBeUndefined();
    await c.stop();
  });

  it('applies only on the replica holding leadership; another takes over from the durable position', async () => {
    const tenant = 'leader';
    const sink = new Sink();
    const handled = { a: 0, b: 0, c: 0 };
    const bTurn = deferred();
    const cTurn = deferred();
    const releases = { a: jest.fn(), b: jest.fn(), c: jest.fn(() => cTurn.reject(new Error('released while waiting'))) };
    const make = (who: 'a' | 'b' | 'c', acquire: () => Promise<void>, messaging: Messaging) =>
      consumer(
        tenant,
        {
          batchSize: 4,
          position: async () => sink.position,
          handle: async (batch) => {
            handled[who] += batch.length;
            sink.commit(batch, who);
          },
          acquireLeadership: acquire,
          releaseLeadership: async () => releases[who](),
        },
        messaging,
      );
    const a = make('a', async () => undefined, m);
    const b = make('b', () => bTurn.promise, m2);
    const c = make('c', () => cTurn.promise, m2);
    a.start();
    b.start();
    c.start();

    const first = await publish(tenant, 10);
    await until(() => sink.applied.length >= 10, 'the leader to apply');
    await sleep(300);
    expect(sink.applied).toEqual(first.positions);
    expect(handled).toEqual({ a: 10, b: 0, c: 0 });
    expect(a.health()).toMatchObject({ running: true, leader: true });
    expect(b.health()).toMatchObject({ running: true, leader: false });

    await a.stop();
    expect(releases.a).toHaveBeenCalled();
    const second = await publish(tenant, 5);
    bTurn.resolve();
    await until(() => sink.applied.length >= 15, 'the new leader to apply');
    await sleep(300);
    expect(sink.applied).toEqual([...first.positions, ...second.positions]);
    expect(sink.by).toEqual([...Array(10).fill('a'), ...Array(5).fill('b')]);
    expect(b.health()).toMatchObject({ leader: true });

    // A replica still waiting for leadership stops promptly, having applied nothing.
    await c.stop();
    expect(releases.c).toHaveBeenCalled();
    expect(handled.c).toBe(0);
    expect(c.health()).toMatchObject({ running: false, leader: false });
    await b.stop();
  });
  it('stands down at once when a failure took its leadership with it, and leads again as soon as it can, not after the back-off', async () => {
    const tenant = 'lostlock';
    const sink = new Sink();
    // The database the handler and the lock live on: while it is down, both fail.
    let down = false;
    let goesDown = false;
    let failures = 0;
    let acquisitions = 0;
    const c = consumer(tenant, {
      // A back-off no test could sit out: recovering must not wait for it.
      backoff: { initialMs: 120_000, maxMs: 120_000 },
      position: async () => sink.position,
      handle: async (batch) => {
        if (goesDown) {
          // The database goes away under the handler, taking the lock's session with it.
          goesDown = false;
          down = true;
          failures++;
          throw new Error('connection terminated');
        }
        // Gone is gone: every call fails until the database is back (not only the first one).
        if (down) throw new Error('connection terminated');
        sink.commit(batch);
      },
      acquireLeadership: async () => {
        await until(() => !down, 'the database to return', 60_000);
        acquisitions++;
      },
      confirmLeadership: async () => !down,
    });
    c.start();
    const first = await publish(tenant, 3);
    await until(() => sink.applied.length >= 3, 'the first events');

    goesDown = true;
    const second = await publish(tenant, 3);
    await until(() => failures >= 1, 'the database to fail under the handler');
    await until(() => !c.health().leader, 'standing down');
    expect(c.health()).toMatchObject({ running: true, healthy: false });
    down = false;
    await until(() => sink.applied.length >= 6, 'the rest once the database is back');
    expect(sink.applied).toEqual([...first.positions, ...second.positions]);
    expect(failures).toBe(1);
    expect(acquisitions).toBe(2);
    expect(c.health()).toMatchObject({ leader: true, healthy: true });
    await c.stop();
  });

  it('stops promptly while it waits out a back-off', async () => {
    const tenant = 'stopinbackoff';
    let failures = 0;
    const c = consumer(tenant, {
      backoff: { initialMs: 120_000, maxMs: 120_000 },
      position: async () => 0,
      handle: async () => {
        failures++;
        throw new Error('not now');
      },
    });
    c.start();
    await publish(tenant, 1);
    await until(() => failures >= 1, 'a failure');
    await c.stop();
    expect(c.health()).toMatchObject({ running: false });
    expect(failures).toBe(1);
  });
});
