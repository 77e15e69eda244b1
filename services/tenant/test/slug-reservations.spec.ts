import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { newEventId } from '@keel/contracts';
import { ensureDatabase, openDataSource } from '@keel/database';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { SlugReservations } from '../src/tenant/slug-reservations';

const SCHEMA = 'slug_test';
const TABLE = `"${SCHEMA}".slug_reservations`;

/** Slug reservations with group commit, against the real PostgreSQL. */
describe('SlugReservations', () => {
  const env = isolatedEnv('slugs');
  let ds: DataSource;
  let admin: Client;
  let statements = 0;

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE SCHEMA "${SCHEMA}"`);
    await admin.query(`CREATE TABLE ${TABLE} (slug text PRIMARY KEY, tenant_id uuid NOT NULL, reserved_at timestamptz NOT NULL DEFAULT now())`);
    ds = await openDataSource({ url: env.DATABASE_URL!, schema: SCHEMA, applicationName: 'slug-reservations-test' });
    const query = ds.query.bind(ds);
    ds.query = ((...args: Parameters<DataSource['query']>) => (statements++, query(...args))) as DataSource['query'];
  });

  afterAll(async () => {
    await ds?.destroy();
    await admin?.end();
    await cleanupEnv(env);
  });

  it('reserves concurrent slugs in few statements, each answered on its own, the first of a duplicate winning', async () => {
    const reservations = new SlugReservations(ds, TABLE);
    const ids = Array.from({ length: 200 }, () => newEventId());
    const before = statements;
    // 200 creates at once, two of them for a slug another of them asks for too.
    const asked = ids.map((id, i) => ({ slug: i === 150 ? 'slug-3' : i === 151 ? 'slug-4' : `slug-${i}`, id }));
    const answers = await Promise.all(asked.map((a) => reservations.reserve(a.slug, a.id)));
    expect(statements - before).toBeLessThanOrEqual(3);
    expect(answers.filter((a) => !a)).toHaveLength(2);
    expect(answers[3]).toBe(true);
    expect(answers[150]).toBe(false);
    expect(answers[151]).toBe(false);
    const { rows } = await admin.query(`SELECT slug, tenant_id::text AS id FROM ${TABLE}`);
    expect(rows).toHaveLength(198);
    expect(rows.find((r) => r.slug === 'slug-3').id).toBe(ids[3]);
    // Held already: refused, whoever asks.
    expect(await reservations.reserve('slug-7', newEventId())).toBe(false);
    expect(await reservations.reserve('fresh', ids[0]!.toUpperCase())).toBe(true);
  });

  it('when a batch fails, tries each of its reservations on its own: only the bad one fails', async () => {
    const reservations = new SlugReservations(ds, TABLE);
    const answers = await Promise.allSettled([reservations.reserve('ok-1', newEventId()), reservations.reserve('bad', 'not-a-uuid'), reservations.reserve('ok-2', newEventId())]);
    // The first went alone; the two asked for meanwhile went together, failed, and went again one by one.
    expect(answers.map((a) => a.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(answers.map((a) => (a.status === 'fulfilled' ? a.value : 'refused'))).toEqual([true, 'refused', true]);
    const { rows } = await admin.query(`SELECT slug FROM ${TABLE} WHERE slug IN ('ok-1', 'ok-2', 'bad') ORDER BY slug`);
    expect(rows.map((r) => r.slug)).toEqual(['ok-1', 'ok-2']);
    expect(await reservations.reserve('ok-3', newEventId())).toBe(true);
  });
});
