import { Client } from 'pg';
import { DataSource, EntityManager } from 'typeorm';
import { parseConfig } from '@keel/config';
import { EventEnvelope, KeelError, newEventId, PositionedEvent } from '@keel/contracts';
import { ensureDatabase, openDataSource } from '@keel/database';
import { closeMessaging, connectMessaging, ensureEventStream, EventStore, Messaging, PermanentEventError, RpcClient } from '@keel/messaging';
import { createLogger } from '@keel/observability';
import { cleanupEnv, eventually, isolatedEnv } from '@keel/testing';
import { Projection, ProjectionRunner, projectionShadowSql, projectionTablesSql, RebuildChanges } from '@keel/projections';
import { Stack } from '@keel/testing';

const logger = createLogger('projection-runner-test', 'silent');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SCHEMA = 'proj_test';

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

async function rejection(p: Promise<unknown>): Promise<KeelError> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: KeelError) => error,
  );
}

/** A read model of one table: a row per applied event. */
function rowsProjection(name: string, context: string, table: string, hooks: { beforeInsert?(e: PositionedEvent): Promise<void>; afterInsert?(e: PositionedEvent): Promise<void> } = {}) {
  const committed: number[] = [];
  const projection: Projection = {
    name,
    contexts: [context],
    tables: [table],
    async apply(manager: EntityManager, events: PositionedEvent[]) {
      for (const e of events) {
        await hooks.beforeInsert?.(e);
        // Unqualified, as projections name their tables: a rebuild points the search_path at the shadow.
        await manager.query(`INSERT INTO ${table} (position, event_id, aggregate_id) VALUES ($1, $2, $3)`, [
          e.position,
          e.event.id,
          e.event.aggregateId,
        ]);
        await hooks.afterInsert?.(e);
      }
      return events.map((e) => e.position);
    },
    async afterCommit(applied) {
      committed.push(...(applied as number[]));
    },
  };
  return { projection, committed };
}

/** A read model of one row per aggregate in two tables (one with a json column), kept by upserts. */
function keyedProjection(name: string, context: string): Projection {
  return {
    name,
    contexts: [context],
    tables: ['keyed', 'keyed_json'],
    async apply(manager: EntityManager, events: PositionedEvent[]) {
      for (const { position, event } of events) {
        const doc = JSON.stringify({ last: event.id });
        await manager.query(
          `INSERT INTO keyed (id, events, last_position, doc) VALUES ($1, 1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET events = keyed.events + 1, last_position = excluded.last_position, doc = excluded.doc`,
          [event.aggregateId, position, doc],
        );
        await manager.query(
          `INSERT INTO keyed_json (id, events, doc) VALUES ($1, 1, $2) ON CONFLICT (id) DO UPDATE SET events = keyed_json.events + 1, doc = excluded.doc`,
          [event.aggregateId, doc],
        );
      }
    },
  };
}

/** ProjectionRunner against the real NATS JetStream and PostgreSQL. */
describe('ProjectionRunner', () => {
  const env = isolatedEnv('projrunner');
  const config = parseConfig(env);
  let m: Messaging;
  let store: EventStore;
  let rpc: RpcClient;
  let ds: DataSource;
  let admin: Client;
  const runners: ProjectionRunner[] = [];
  const gates: (() => void)[] = [];
  const heads = new Map<string, { position: number; version: number }>();

  async function publish(context: string, aggregateId: string, data: Record<string, unknown> = {}): Promise<{ position: number; event: EventEnvelope }> {
    const head = heads.get(`${context}/${aggregateId}`) ?? { position: 0, version: 0 };
    const event: EventEnvelope = {
      id: newEventId(),
      type: `${context}.thing.happened`,
      schemaVersion: 1,
      tenantId: 't1',
      aggregateType: 'thing',
      aggregateId,
      aggregateVersion: head.version + 1,
      occurredAt: new Date().toISOString(),
      actor: { kind: 'system', id: 'projection-runner-test' },
      correlationId: 'projection-runner-test',
      data,
    };
    const [position] = await store.append([event], head.position);
    heads.set(`${context}/${aggregateId}`, { position: position!, version: head.version + 1 });
    return { position: position!, event };
  }

  async function runner(projection: Projection, batchSize = 10): Promise<ProjectionRunner> {
    const r = new ProjectionRunner({ ds, messaging: m, rpc, logger, schema: SCHEMA, projection, batchSize });
    runners.push(r);
    await r.start();
    return r;
  }

  const checkpointRow = async (name: string) =>
    Number((await admin.query(`SELECT position FROM "${SCHEMA}".projection_checkpoints WHERE name = $1`, [name])).rows[0]?.position ?? -1);
  const positionsIn = async (table: string) =>
    (await admin.query(`SELECT position::int AS p FROM "${SCHEMA}".${table} ORDER BY position, event_id`)).rows.map((r) => r.p as number);

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE SCHEMA "${SCHEMA}"`);
    for (const sql of projectionTablesSql(SCHEMA)) await admin.query(sql);
    for (const table of ['items', 'slow', 'poisoned', 'replicated', 'rebuilt']) {
      // No unique constraint: a row applied twice would show as two rows.
      await admin.query(`CREATE TABLE "${SCHEMA}".${table} (position bigint NOT NULL, event_id uuid NOT NULL, aggregate_id text NOT NULL)`);
    }
    // Keyed read models: one row per aggregate, with a jsonb column, and one with a json column (no equality operator).
    await admin.query(`CREATE TABLE "${SCHEMA}".keyed (id text PRIMARY KEY, events integer NOT NULL, last_position bigint NOT NULL, doc jsonb NOT NULL)`);
    await admin.query(`CREATE TABLE "${SCHEMA}".keyed_json (id text PRIMARY KEY, events integer NOT NULL, doc json NOT NULL)`);
    for (const sql of projectionShadowSql(SCHEMA, 'CURRENT_USER', [{ name: 'rebuilt' }, { name: 'keyed' }, { name: 'keyed_json' }])) await admin.query(sql);
    ds = await openDataSource({ url: env.DATABASE_URL!, schema: SCHEMA, applicationName: 'projection-runner-test' });
    m = await connectMessaging(config, 'projection-runner-test');
    await ensureEventStream(m.jsm, { stream: config.KEEL_STREAM, prefix: config.KEEL_SUBJECT_PREFIX, replicas: 1 });
    store = new EventStore(m);
    rpc = new RpcClient(m);
  });

  afterAll(async () => {
    for (const open of gates) open();
    for (const r of runners) await r.stop().catch(() => undefined);
    await ds?.destroy();
    await admin?.end();
    await closeMessaging(m);
    await cleanupEnv(env);
  });

  it('applies its events with the checkpoint in the same transaction; a failed batch leaves no trace', async () => {
    let failOn: string | undefined;
    let failures = 0;
    const { projection, committed } = rowsProjection('items', 'shop', 'items', {
      async afterInsert(e) {
        if (e.event.id === failOn && failures === 0) {
          failures++;
          throw new Error('connection lost after the insert');
        }
      },
    });
    const r = await runner(projection);

    // Sample checkpoint and rows in one statement (one snapshot) while events are applied.
    let sampling = true;
    const samples: { cp: number; maxp: number }[] = [];
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await admin.query(
          `SELECT (SELECT position FROM "${SCHEMA}".projection_checkpoints WHERE name = 'items')::int AS cp,
                  (SELECT coalesce(max(position), 0) FROM "${SCHEMA}".items)::int AS maxp`,
        );
        samples.push(rows[0]);
      }
    })();

    const shop: number[] = [];
    const other: number[] = [];
    for (let i = 0; i < 30; i++) {
      if (i % 6 === 5) {
        other.push((await publish('other', `o${i % 2}`)).position);
        continue;
      }
      const { position, event } = await publish('shop', `s${i % 4}`);
      if (i === 13) failOn = event.id;
      shop.push(position);
    }
    const last = shop[shop.length - 1]!;
    await r.waitFor(last, 10_000);
    sampling = false;
    await sampler;

    expect(failures).toBe(1);
    expect(await positionsIn('items')).toEqual(shop); // every event once, the failed one included
    expect(await checkpointRow('items')).toBe(last);
    expect(await r.readCheckpoint()).toBe(last);
    expect(r.health()).toMatchObject({ checkpoint: last, healthy: true, deadLetters: 0 });
    expect(samples.length).toBeGreaterThan(0);
    expect(samples.filter((s) => s.cp !== s.maxp)).toEqual([]);
    expect(committed).toEqual(shop); // afterCommit saw each committed position once, in order
    expect(other.every((p) => !shop.includes(p))).toBe(true);
  });

  it('resumes after its own checkpoint when restarted, applying nothing twice', async () => {
    const first = runners[0]!;
    const before = await positionsIn('items');
    await first.stop();
    const published: { position: number; event: EventEnvelope }[] = [];
    for (let i = 0; i < 5; i++) published.push(await publish('shop', `s${i % 4}`));
    // While it is stopped, the first two are applied elsewhere (as a rebuild would) with the checkpoint.
    for (const { position, event } of published.slice(0, 2)) {
      await admin.query(`INSERT INTO "${SCHEMA}".items (position, event_id, aggregate_id) VALUES ($1, $2, $3)`, [position, event.id, event.aggregateId]);
    }
    await admin.query(`UPDATE "${SCHEMA}".projection_checkpoints SET position = $1 WHERE name = 'items'`, [published[1]!.position]);

    const { projection, committed } = rowsProjection('items', 'shop', 'items');
    const again = await runner(projection);
    const last = published[published.length - 1]!.position;
    await again.waitFor(last, 10_000);
    expect(await positionsIn('items')).toEqual([...before, ...published.map((p) => p.position)]);
    expect(committed).toEqual(published.slice(2).map((p) => p.position));
    expect(await again.readCheckpoint()).toBe(last);
  });

  it('applies a decision of several events together, in order, at its one position', async () => {
    const r = runners[runners.length - 1]!;
    const head = heads.get('shop/decision') ?? { position: 0, version: 0 };
    const decision: EventEnvelope[] = [1, 2, 3].map((i) => ({
      id: newEventId(), type: 'shop.thing.happened', schemaVersion: 1, tenantId: 't1', aggregateType: 'thing', aggregateId: 'decision',
      aggregateVersion: head.version + i, occurredAt: new Date().toISOString(), actor: { kind: 'system', id: 'projection-runner-test' },
      correlationId: 'decision', data: { i },
    }));
    const positions = await store.append(decision, head.position);
    heads.set('shop/decision', { position: positions[0]!, version: head.version + 3 });
    await r.waitFor(positions[0]!, 10_000);
    const { rows } = await admin.query(`SELECT position::int AS p, event_id FROM "${SCHEMA}".items WHERE aggregate_id = 'decision' ORDER BY ctid`);
    expect(rows).toEqual(decision.map((e) => ({ p: positions[0], event_id: e.id })));
    expect(await r.readCheckpoint()).toBe(positions[0]);
  });

  it('waitFor resolves once the position is applied, and at once when nothing of its own is pending', async () => {
    const r = runners[runners.length - 1]!;
    const { position } = await publish('shop', 'wait');
    await r.waitFor(position, 5_000);
    expect(await positionsIn('items')).toContain(position);
    expect(await r.readCheckpoint()).toBeGreaterThanOrEqual(position);

    // An event of another context: nothing of this projection lies before it. It resolves (a
    // wait for the checkpoint would reject at the deadline), and long before its deadline: "at
    // once" is told from "at the deadline" with room for a loaded machine's round trips.
    const { position: foreign } = await publish('other', 'wait');
    const started = Date.now();
    await r.waitFor(foreign, 20_000);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await r.readCheckpoint()).toBeLessThan(foreign);
  });

  it('waitFor answers consistency_timeout for a position that never comes', async () => {
    const r = runners[runners.length - 1]!;
    const beyond = (await store.lastPosition()) + 100;
    const started = Date.now();
    const error = await rejection(r.waitFor(beyond, 300));
    const took = Date.now() - started;
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('consistency_timeout');
    expect(error.status).toBe(503);
    expect(error.message).toContain(String(beyond));
    // Never before its timeout; after it, it gives up (one poll's overshoot) rather than hanging,
    // and well before the 3 s default: the timeout given is the one used.
    expect(took).toBeGreaterThanOrEqual(300);
    expect(took).toBeLessThan(2_500);
  });

  it('waitFor answers consistency_timeout while its event is still being applied, then resolves once it is', async () => {
    const gate = deferred();
    gates.push(gate.resolve);
    let entered = 0;
    const { projection } = rowsProjection('slow', 'slowctx', 'slow', {
      async beforeInsert() {
        entered++;
        await gate.promise;
      },
    });
    const r = await runner(projection);
    const { position } = await publish('slowctx', 'x');
    await until(() => entered > 0, 'apply to start');

    const error = await rejection(r.waitFor(position, 400));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('consistency_timeout');
    expect(await positionsIn('slow')).toEqual([]);
    // Delivered and not yet settled: still lag.
    expect(await r.lag()).toBe(1);

    gate.resolve();
    await r.waitFor(position, 5_000);
    expect(await positionsIn('slow')).toEqual([position]);
    expect(await r.readCheckpoint()).toBe(position);
  });

  it('lag is what it has not applied of its own subjects, not the stream head minus its checkpoint', async () => {
    const r = runners.find((x) => x.name === 'items' && x.health().running)!;
    const { position } = await publish('shop', 'lag');
    await r.waitFor(position, 5_000);
    expect(await r.lag()).toBe(0);
    // Events of other contexts are not its lag, though the stream head moved past its checkpoint.
    await publish('other', 'lag');
    await publish('other', 'lag');
    expect(await r.lag()).toBe(0);
    expect((await store.lastPosition()) - (await r.readCheckpoint())).toBeGreaterThanOrEqual(2);
    // Its own events, while it is stopped, are.
    await r.stop();
    await publish('shop', 'lag');
    await publish('shop', 'lag');
    expect(await r.lag()).toBe(2);
    r.consumer.start();
    await eventually(() => r.lag(), (n) => n === 0, { timeoutMs: 10_000, what: 'the lag to drain' });
  });

  it('dead-letters an event that can never apply, moves its checkpoint past it and reports itself unhealthy', async () => {
    const { projection } = rowsProjection('poisoned', 'poisonctx', 'poisoned', {
      async beforeInsert(e) {
        if (e.event.data.poison) throw new PermanentEventError('refers to an unknown plan');
      },
    });
    const r = await runner(projection);
    const a = await publish('poisonctx', 'p');
    const bad = await publish('poisonctx', 'p', { poison: true });
    const c = await publish('poisonctx', 'p');
    await r.waitFor(c.position, 10_000);

    expect(await positionsIn('poisoned')).toEqual([a.position, c.position]);
    const { rows } = await admin.query(`SELECT consumer, position::int AS position, subject, payload, reason FROM "${SCHEMA}".dead_letters`);
    expect(rows).toEqual([
      { consumer: 'poisoned', position: bad.position, subject: store.subjectOf(bad.event), payload: expect.any(String), reason: 'refers to an unknown plan' },
    ]);
    expect(JSON.parse(rows[0].payload)).toEqual(bad.event);
    expect(await checkpointRow('poisoned')).toBe(c.position);
    expect(r.health()).toMatchObject({ healthy: false, deadLetters: 1 });
  });

  it('dead-letters what is not even JSON, NUL bytes included, and a decision whose retry applies its events together', async () => {
    const { projection } = rowsProjection('poisoned', 'poisonctx', 'poisoned', {
      async beforeInsert(e) {
        if (e.event.data.failOnce && !fixed) throw new PermanentEventError('not yet');
      },
    });
    let fixed = false;
    const r = runners.find((x) => x.name === 'poisoned')!;
    await r.stop();
    const again = await runner(projection);
    // A raw NUL byte: the parser's message and the payload both reach text columns.
    const subject = store.subjectOf({ tenantId: 't1', type: 'poisonctx.x.x', aggregateType: 'thing', aggregateId: 'raw' });
    const nul = await m.js.publish(subject, new Uint8Array([0x7b, 0x22, 0x78, 0x22, 0x3a, 0x31, 0x7d, 0x00]));
    // A decision of two events that fails as a whole.
    const head = heads.get('poisonctx/decision') ?? { position: 0, version: 0 };
    const decision: EventEnvelope[] = [1, 2].map((i) => ({
      id: newEventId(), type: 'poisonctx.thing.happened', schemaVersion: 1, tenantId: 't1', aggregateType: 'thing', aggregateId: 'decision',
      aggregateVersion: head.version + i, occurredAt: new Date().toISOString(), actor: { kind: 'system', id: 'projection-runner-test' },
      correlationId: 'decision', data: { failOnce: true },
    }));
    const [position] = await store.append(decision, head.position);
    const after = await publish('poisonctx', 'p');
    await again.waitFor(after.position, 15_000);
    const letters = await again.deadLetters(false, 10);
    const rawLetter = letters.find((l) => l.position === nul.seq)!;
    expect(rawLetter.reason).toMatch(/invalid event envelope|JSON/);
    expect(rawLetter.payload).not.toContain('\u0000');
    const decisionLetter = letters.find((l) => l.position === position)!;
    expect(JSON.parse(decisionLetter.payload).map((e: EventEnvelope) => e.id)).toEqual(decision.map((e) => e.id));
    // After the fix, the retry applies both events of the decision, together, once.
    fixed = true;
    await again.retryDeadLetter(decisionLetter.id, { kind: 'user', id: 'operator' });
    const { rows } = await admin.query(`SELECT event_id FROM "${SCHEMA}".poisoned WHERE position = $1 ORDER BY ctid`, [position]);
    expect(rows.map((x) => x.event_id)).toEqual(decision.map((e) => e.id));
    await expect(again.retryDeadLetter(decisionLetter.id, { kind: 'user', id: 'operator' })).rejects.toMatchObject({ code: 'conflict' });
    // The raw one can only be skipped: the skip is an event whose body holds the (cleaned) reason.
    await expect(again.retryDeadLetter(rawLetter.id, { kind: 'user', id: 'operator' })).rejects.toMatchObject({ code: 'conflict' });
    const skipped = await again.skipDeadLetter(rawLetter.id, { actor: { kind: 'user', id: 'operator' }, correlationId: 'skip' });
    expect(skipped).toMatchObject({ resolution: 'skipped', resolvedBy: 'user:operator' });
  });

  it('a hold longer than the consumer\'s retries neither dead-letters live events nor reports an error', async () => {
    const { projection } = rowsProjection('items', 'shop', 'items');
    const r = runners.find((x) => x.name === 'items' && x.health().running) ?? (await runner(projection));
    await admin.query(`UPDATE "${SCHEMA}".projection_checkpoints SET held_until = now() + interval '5 seconds' WHERE name = 'items'`);
    const held = await publish('shop', 'held');
    const started = Date.now();
    await r.waitFor(held.position, 20_000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(3_000);
    expect(await positionsIn('items')).toContain(held.position);
    const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${SCHEMA}".dead_letters WHERE consumer = 'items'`);
    expect(rows[0].n).toBe(0);
    expect(r.health()).toMatchObject({ healthy: true });
  });

  it('two replicas of one projection: one applies, the other takes over when it stops', async () => {
    const a = await runner(rowsProjection('replicated', 'repctx', 'replicated').projection);
    const b = await runner(rowsProjection('replicated', 'repctx', 'replicated').projection);
    const first: number[] = [];
    for (let i = 0; i < 6; i++) first.push((await publish('repctx', `r${i % 2}`)).position);
    await a.waitFor(first[first.length - 1]!, 10_000);
    await sleep(300);
    expect(await positionsIn('replicated')).toEqual(first);
    const leaders = [a, b].filter((x) => x.health().leader);
    expect(leaders).toHaveLength(1);

    const leader = leaders[0]!;
    const standby = leader === a ? b : a;
    await leader.stop();
    const second: number[] = [];
    for (let i = 0; i < 4; i++) second.push((await publish('repctx', `r${i % 2}`)).position);
    await standby.waitFor(second[second.length - 1]!, 10_000);
    expect(await positionsIn('replicated')).toEqual([...first, ...second]);
    expect(standby.health().leader).toBe(true);
  });

  it('rebuilds beside the live model, asked of the standby replica while events flow, and continues without skipping or repeating one', async () => {
    const audit = new Stack(env);
    await audit.start('audit');
    try {
      const a = await runner(rowsProjection('rebuilt', 'rebctx', 'rebuilt').projection);
      const b = await runner(rowsProjection('rebuilt', 'rebctx', 'rebuilt').projection);
      const published: number[] = [];
      for (let i = 0; i < 40; i++) published.push((await publish('rebctx', `b${i % 3}`)).position);
      await a.waitFor(published[published.length - 1]!, 10_000);
      await until(() => a.health().leader || b.health().leader, 'a leader');
      const standby = a.health().leader ? b : a;
      const leader = standby === a ? b : a;

      let reading = true;
      const counts: number[] = [];
      const reader = (async () => {
        while (reading) counts.push(Number((await admin.query(`SELECT count(*) AS n FROM "${SCHEMA}".rebuilt`)).rows[0].n));
      })();
      let writing = true;
      const writer = (async () => {
        while (writing) published.push((await publish('rebctx', 'live')).position);
      })();
      const result = await standby.rebuild();
      for (let i = 0; i < 5; i++) published.push((await publish('rebctx', 'after')).position);
      writing = false;
      await writer;
      reading = false;
      await reader;
      await leader.waitFor(published[published.length - 1]!, 20_000);

      expect(result).toMatchObject({ name: `${SCHEMA}.rebuilt` });
      expect(result.replayed).toBeGreaterThanOrEqual(40);
      expect(Math.min(...counts)).toBeGreaterThanOrEqual(40);
      expect(await positionsIn('rebuilt')).toEqual([...published].sort((x, y) => x - y));
      expect(await standby.status()).toMatchObject({ name: `${SCHEMA}.rebuilt`, deadLetters: 0 });
      // Two rebuilds at once: one runs, the other is refused.
      const both = await Promise.allSettled([leader.rebuild(), standby.rebuild()]);
      expect(both.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      expect(both.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(['conflict']);
      expect(await positionsIn('rebuilt')).toEqual([...published].sort((x, y) => x - y));
    } finally {
      await audit.stop();
    }
  });
  it('swaps in only the rows that differ: rows equal to the rebuilt ones are not rewritten, the others are put right', async () => {
    const audit = new Stack(env);
    await audit.start('audit');
    try {
      const heard: RebuildChanges[] = [];
      const r = await runner({ ...keyedProjection('keyed', 'keyctx'), afterRebuild: async (changes) => void heard.push(changes) });
      let last = 0;
      for (let i = 0; i < 30; i++) last = (await publish('keyctx', `k${i % 6}`)).position;
      await r.waitFor(last, 10_000);
      const rows = async (table: string) => (await admin.query(`SELECT id, events, doc::text AS doc FROM "${SCHEMA}".${table} ORDER BY id`)).rows;
      const expected = { keyed: await rows('keyed'), keyed_json: await rows('keyed_json') };
      expect(expected.keyed).toHaveLength(6);
      // The live model drifted (as a bug or a hand edit would leave it): a wrong row, a missing one, one too many.
      for (const table of ['keyed', 'keyed_json']) {
        await admin.query(`UPDATE "${SCHEMA}".${table} SET events = 99 WHERE id = 'k1'`);
        await admin.query(`DELETE FROM "${SCHEMA}".${table} WHERE id = 'k2'`);
      }
      await admin.query(`INSERT INTO "${SCHEMA}".keyed (id, events, last_position, doc) VALUES ('ghost', 1, 1, '{}')`);
      const versions = async (table: string) =>
        Object.fromEntries((await admin.query(`SELECT id, xmin::text AS x FROM "${SCHEMA}".${table}`)).rows.map((x) => [x.id, x.x]));
      const before = { keyed: await versions('keyed'), keyed_json: await versions('keyed_json') };

      await r.rebuild();
      expect(await rows('keyed')).toEqual(expected.keyed);
      expect(await rows('keyed_json')).toEqual(expected.keyed_json);
      const after = { keyed: await versions('keyed'), keyed_json: await versions('keyed_json') };
      // With equality on every column, the rows that agreed are the same row versions; the wrong and missing ones are new.
      for (const id of ['k0', 'k3', 'k4', 'k5']) expect(after.keyed[id]).toBe(before.keyed[id]);
      for (const id of ['k1', 'k2']) expect(after.keyed[id]).not.toBe(before.keyed[id]);
      // A json column has no equality operator: every row was replaced, and the table is right all the same.
      for (const id of ['k0', 'k3']) expect(after.keyed_json[id]).not.toBe(before.keyed_json[id]);
      // What the swap changed, for the projection's own caches: the drifted rows as they were and as they are now; all of the json table.
      expect(heard).toHaveLength(1);
      const keyed = heard[0]!.keyed as Exclude<RebuildChanges[string], 'all'>;
      expect(keyed.removed.map((x) => [x.id, x.events]).sort()).toEqual([['ghost', 1], ['k1', 99]]);
      expect(keyed.added.map((x) => x.id).sort()).toEqual(['k1', 'k2']);
      expect(keyed.added.find((x) => x.id === 'k1')!.events).toBe(expected.keyed.find((x: { id: string }) => x.id === 'k1').events);
      expect(heard[0]!.keyed_json).toBe('all');
      const shadow = await admin.query(`SELECT (SELECT count(*) FROM "${SCHEMA}_rebuild".keyed)::int AS a, (SELECT count(*) FROM "${SCHEMA}_rebuild".keyed_json)::int AS b`);
      expect(shadow.rows[0]).toEqual({ a: 0, b: 0 });

      // And it goes on live from where the rebuild left it.
      const next = await publish('keyctx', 'k0');
      await r.waitFor(next.position, 10_000);
      expect((await rows('keyed')).find((x) => x.id === 'k0').events).toBe(expected.keyed.find((x: { id: string }) => x.id === 'k0').events + 1);
    } finally {
      await audit.stop();
    }
  });
});
