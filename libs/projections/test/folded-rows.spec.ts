import { Client } from 'pg';
import { DataSource, EntityManager } from 'typeorm';
import { EventEnvelope, newEventId, PositionedEvent } from '@keel/contracts';
import { ensureDatabase, openDataSource } from '@keel/database';
import { PermanentEventError } from '@keel/messaging';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { applyFolded, FoldedRows } from '@keel/projections';

const SCHEMA = 'folded_test';

interface ThingRow {
  id: string;
  name: string;
  tags: string[];
  version: number;
  position: string | number;
  created_at: Date | string;
}

const things: FoldedRows<ThingRow> = {
  table: 'things',
  columns: ['id', 'name', 'tags', 'version', 'position', 'created_at'],
  key: 'id',
  version: 'version',
  keyOf: ({ event }) => event.aggregateId,
  creates: ({ event }) => event.type === 'x.thing.created',
  evolve(row, { position, event }) {
    const data = event.data as { name?: string; tag?: string };
    if (event.type === 'x.thing.created') return { id: event.aggregateId, name: data.name!, tags: [], version: event.aggregateVersion, position, created_at: event.occurredAt };
    if (!row) throw new PermanentEventError(`${event.type} for unknown thing ${event.aggregateId}`);
    if (event.type === 'x.thing.noop') return undefined;
    return { ...row, ...(data.name ? { name: data.name } : {}), tags: data.tag ? [...row.tags, data.tag] : row.tags, version: event.aggregateVersion, position };
  },
};

/** applyFolded against the real PostgreSQL. */
describe('applyFolded', () => {
  const env = isolatedEnv('folded');
  let ds: DataSource;
  let admin: Client;
  let position = 0;
  const versions = new Map<string, number>();

  const event = (id: string, type: string, data: Record<string, unknown> = {}, version = (versions.get(id) ?? 0) + 1): PositionedEvent => {
    versions.set(id, Math.max(versions.get(id) ?? 0, version));
    const e: EventEnvelope = {
      id: newEventId(), type, schemaVersion: 1, tenantId: 't1', aggregateType: 'thing', aggregateId: id, aggregateVersion: version,
      occurredAt: new Date(Date.UTC(2026, 0, 1, 0, 0, 0, ++position)).toISOString(), actor: { kind: 'system', id: 'folded-test' }, correlationId: 'folded-test', data,
    };
    return { position, event: e };
  };
  /** One transaction, counting the statements the fold sends. */
  const apply = async (events: PositionedEvent[], table = 'things') => {
    let statements = 0;
    const written = await ds.transaction(async (m) => {
      const counted = new Proxy(m, {
        get: (target, prop) => (prop === 'query' ? (...args: Parameters<EntityManager['query']>) => (statements++, target.query(...args)) : Reflect.get(target, prop)),
      });
      return applyFolded(counted, { ...things, table }, events);
    });
    return { written, statements };
  };
  const stored = async (table = 'things') =>
    (await admin.query(`SELECT id, name, tags, version, position::int AS position, created_at FROM "${SCHEMA}".${table} ORDER BY id`)).rows;

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE SCHEMA "${SCHEMA}"`);
    for (const table of ['things', 'singles', 'batched']) {
      await admin.query(
        `CREATE TABLE "${SCHEMA}".${table} (id text PRIMARY KEY, name text NOT NULL UNIQUE, tags jsonb NOT NULL, version integer NOT NULL, position bigint NOT NULL, created_at timestamptz NOT NULL)`,
      );
    }
    ds = await openDataSource({ url: env.DATABASE_URL!, schema: SCHEMA, applicationName: 'folded-rows-test' });
  });

  afterAll(async () => {
    await ds?.destroy();
    await admin?.end();
    await cleanupEnv(env);
  });

  it('folds a batch into rows and writes them in one statement; a stored row is read once, only when an event needs it', async () => {
    const creations = [event('a', 'x.thing.created', { name: 'A' }), event('b', 'x.thing.created', { name: 'B' })];
    const first = await apply(creations);
    expect(first.statements).toBe(1); // creations only: nothing to read
    expect(first.written.map((r) => r.id)).toEqual(['a', 'b']);

    const batch = [
      event('a', 'x.thing.tagged', { tag: 'one' }),
      event('c', 'x.thing.created', { name: 'C' }),
      event('a', 'x.thing.tagged', { tag: 'two', name: 'A2' }),
      event('c', 'x.thing.tagged', { tag: 'new' }),
      event('b', 'x.thing.noop'),
    ];
    const second = await apply(batch);
    expect(second.statements).toBe(2); // one read (a, c and b together), one write
    expect(second.written.map((r) => r.id).sort()).toEqual(['a', 'c']); // b did not change
    expect(await stored()).toEqual([
      { id: 'a', name: 'A2', tags: ['one', 'two'], version: 3, position: batch[2]!.position, created_at: new Date(creations[0]!.event.occurredAt) },
      { id: 'b', name: 'B', tags: [], version: 1, position: creations[1]!.position, created_at: new Date(creations[1]!.event.occurredAt) },
      { id: 'c', name: 'C', tags: ['new'], version: 2, position: batch[3]!.position, created_at: new Date(batch[1]!.event.occurredAt) },
    ]);
  });

  it('changes nothing for events the row is already at or past, nor for a creation whose row exists', async () => {
    const before = await stored();
    const old = event('a', 'x.thing.tagged', { tag: 'stale' }, 2);
    const again = event('b', 'x.thing.created', { name: 'B again' }, 1);
    expect((await apply([old])).written).toEqual([]);
    const recreated = await apply([again]); // not read: written only if absent
    expect(recreated).toEqual({ written: [], statements: 1 });
    expect(await stored()).toEqual(before);
  });

  it('fails the whole batch for an event of an unknown row, writing nothing', async () => {
    const before = await stored();
    await expect(apply([event('d', 'x.thing.created', { name: 'D' }), event('ghost', 'x.thing.tagged', { tag: 'x' })])).rejects.toBeInstanceOf(PermanentEventError);
    expect(await stored()).toEqual(before);
    // A row's unique column is still the table's to enforce: a second row with B's name is refused.
    await expect(apply([event('e', 'x.thing.created', { name: 'B' })])).rejects.toThrow(/unique|duplicate/i);
    expect(await stored()).toEqual(before);
  });

  it('stores exactly the text it folded (quotes, escapes, unicode beyond the BMP), and refuses what Postgres cannot hold, writing nothing', async () => {
    const name = 'quote " back\\slash \n tab\t é 𝄞 🎉 \u2028 end';
    const tag = '{"not": "an object"} ü \u001f';
    await apply([event('u1', 'x.thing.created', { name })]);
    await apply([event('u1', 'x.thing.tagged', { tag })]);
    const [row] = (await stored()).filter((r) => r.id === 'u1');
    expect(row).toMatchObject({ name, tags: [tag], version: 2 });
    const before = await stored();
    // A NUL and an unpaired surrogate: no text column can hold them; the batch fails as a whole (the
    // runner dead-letters the event), and nothing of it is written.
    await expect(apply([event('u2', 'x.thing.created', { name: 'fine' }), event('u3', 'x.thing.created', { name: 'a\u0000b' })])).rejects.toThrow(/unicode|\\u0000/i);
    await expect(apply([event('u4', 'x.thing.created', { name: 'x\ud800' })])).rejects.toThrow(/unicode|surrogate|invalid input/i);
    expect(await stored()).toEqual(before);
  });

  it('gives the same rows folded a batch at a time as applied one event at a time', async () => {
    const events: PositionedEvent[] = [];
    for (let i = 0; i < 120; i++) {
      const id = `r${i % 7}`;
      events.push(versions.has(id) ? event(id, i % 5 === 0 ? 'x.thing.noop' : 'x.thing.tagged', { tag: `t${i}`, ...(i % 3 ? {} : { name: `N${i}` }) }) : event(id, 'x.thing.created', { name: `N${i}` }));
    }
    for (const e of events) await apply([e], 'singles');
    for (let i = 0; i < events.length; i += 25) await apply(events.slice(i, i + 25), 'batched');
    const singles = await stored('singles');
    expect(singles).toHaveLength(7);
    expect(await stored('batched')).toEqual(singles);
  });
});
