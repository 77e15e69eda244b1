import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { MigrationInterface, QueryRunner } from 'typeorm';
import { databaseName, dropDatabase, ensureDatabase, provisionServiceSchema, scramVerifier } from '@keel/database';
import { cleanupEnv, isolatedEnv } from '@keel/testing';

/** A one-table migration for `schema`, counting how often it ran. */
function widgetsMigration(schema: string, role: string) {
  const counter = { runs: 0 };
  class CreateWidgets1700000000000 implements MigrationInterface {
    name = 'CreateWidgets1700000000000';
    async up(q: QueryRunner): Promise<void> {
      counter.runs++;
      // No IF NOT EXISTS: running it twice would fail.
      await q.query(`CREATE TABLE "${schema}".widgets (id integer PRIMARY KEY, name text NOT NULL)`);
      await q.query(`GRANT SELECT, INSERT ON "${schema}".widgets TO "${role}"`);
    }
    async down(q: QueryRunner): Promise<void> {
      await q.query(`DROP TABLE "${schema}".widgets`);
    }
  }
  return { migration: CreateWidgets1700000000000, counter };
}

const withUser = (url: string, user: string, password: string) => {
  const u = new URL(url);
  u.username = user;
  u.password = password;
  return u.toString();
};

/** Database provisioning against the real PostgreSQL. */
describe('provisioning', () => {
  const env = isolatedEnv('provision');
  const suffix = randomBytes(4).toString('hex');
  const roles = [`keel_t_${suffix}_a`, `keel_t_${suffix}_b`, `keel_t_${suffix}_c`, `keel_t_${suffix}_d`];
  const raceUrl = (() => {
    const u = new URL(env.DATABASE_URL!);
    u.pathname = `${u.pathname}_race`;
    return u.toString();
  })();
  let admin: Client;

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.end();
    await dropDatabase(raceUrl).catch(() => undefined);
    await cleanupEnv(env);
    // Roles are cluster-wide: drop them once the databases they had grants in are gone.
    const rootUrl = new URL(env.DATABASE_URL!);
    rootUrl.pathname = '/postgres';
    const root = new Client({ connectionString: rootUrl.toString() });
    await root.connect();
    try {
      for (const role of roles) await root.query(`DROP ROLE IF EXISTS "${role}"`);
    } finally {
      await root.end();
    }
  });

  it('ensureDatabase creates the database once and is fine to call again', async () => {
    const name = databaseName(env.DATABASE_URL!);
    await ensureDatabase(env.DATABASE_URL!);
    await ensureDatabase(env.DATABASE_URL!);
    const { rows } = await admin.query('SELECT datname FROM pg_database WHERE datname = $1', [name]);
    expect(rows).toHaveLength(1);
    expect((await admin.query('SELECT current_database() AS db')).rows[0].db).toBe(name);
  });

  it('ensureDatabase is safe to race', async () => {
    await expect(Promise.all([ensureDatabase(raceUrl), ensureDatabase(raceUrl), ensureDatabase(raceUrl)])).resolves.toBeDefined();
    const { rows } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [databaseName(raceUrl)]);
    expect(rows).toHaveLength(1);
  });

  it('provisionServiceSchema creates role and schema, runs the migration once and sets the search_path; twice is fine', async () => {
    const schema = 'svc_one';
    const role = roles[0]!;
    const { migration, counter } = widgetsMigration(schema, role);
    const s = { schema, role, password: 'secret-1', migrations: [migration] };
    await provisionServiceSchema(env.DATABASE_URL!, s);
    await provisionServiceSchema(env.DATABASE_URL!, s);

    expect(counter.runs).toBe(1);
    const r = await admin.query('SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = $1', [role]);
    expect(r.rows).toEqual([{ rolcanlogin: true, rolsuper: false }]);
    const owner = await admin.query('SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = $1', [schema]);
    expect(owner.rows).toHaveLength(1);
    expect(owner.rows[0].owner).not.toBe(role);
    const tables = await admin.query('SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name', [schema]);
    expect(tables.rows.map((t) => t.table_name)).toEqual(['schema_migrations', 'widgets']);
    const applied = await admin.query(`SELECT name FROM "${schema}".schema_migrations`);
    expect(applied.rows).toEqual([{ name: 'CreateWidgets1700000000000' }]);

    // The secret never travels as such: the role holds a SCRAM-SHA-256 verifier of it, made here.
    const stored = (await admin.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role])).rows[0].rolpassword as string;
    const [, iterations, salt, storedKey] = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):/.exec(stored)!;
    expect(scramVerifier('secret-1', Buffer.from(salt!, 'base64'), Number(iterations))).toBe(stored);
    expect(scramVerifier('secret-2', Buffer.from(salt!, 'base64'), Number(iterations))).not.toContain(storedKey!);
    // The same verifier Postgres makes itself from the plain password, with its salt.
    const probe = `probe_${randomBytes(3).toString('hex')}`;
    await admin.query(`SET password_encryption = 'scram-sha-256'`);
    await admin.query(`CREATE ROLE ${probe} PASSWORD 'Plain-Secret_42'`);
    try {
      const own = (await admin.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [probe])).rows[0].rolpassword as string;
      const [, n, s] = /^SCRAM-SHA-256\$(\d+):([^$]+)\$/.exec(own)!;
      expect(scramVerifier('Plain-Secret_42', Buffer.from(s!, 'base64'), Number(n))).toBe(own);
    } finally {
      await admin.query(`DROP ROLE ${probe}`);
    }

    // The role itself: its search_path points at its schema, where it can use what it was granted.
    const asRole = new Client({ connectionString: withUser(env.DATABASE_URL!, role, 'secret-1') });
    await asRole.connect();
    try {
      const path = (await asRole.query('SHOW search_path')).rows[0].search_path as string;
      expect(path.replace(/"/g, '')).toBe(schema);
      await asRole.query(`INSERT INTO widgets (id, name) VALUES (1, 'w')`);
      expect((await asRole.query('SELECT name FROM widgets')).rows).toEqual([{ name: 'w' }]);
      // USAGE only: the role cannot change what the migrations set up.
      await expect(asRole.query('CREATE TABLE intruder (x int)')).rejects.toMatchObject({ code: '42501' });
      await expect(asRole.query('DROP TABLE widgets')).rejects.toMatchObject({ code: '42501' });
    } finally {
      await asRole.end();
    }
  });

  it('runs only the migrations not applied yet when a new one is added', async () => {
    const schema = 'svc_one';
    const role = roles[0]!;
    const { migration, counter } = widgetsMigration(schema, role);
    let secondRuns = 0;
    class AddColour1700000000001 implements MigrationInterface {
      name = 'AddColour1700000000001';
      async up(q: QueryRunner): Promise<void> {
        secondRuns++;
        await q.query(`ALTER TABLE "${schema}".widgets ADD COLUMN colour text`);
      }
      async down(): Promise<void> {}
    }
    await provisionServiceSchema(env.DATABASE_URL!, { schema, role, password: 'secret-1', migrations: [migration, AddColour1700000000001] });
    expect(counter.runs).toBe(0);
    expect(secondRuns).toBe(1);
    const applied = await admin.query(`SELECT name FROM "${schema}".schema_migrations ORDER BY id`);
    expect(applied.rows.map((m) => m.name)).toEqual(['CreateWidgets1700000000000', 'AddColour1700000000001']);
  });

  it('two concurrent provisionings of the same schema both succeed and migrate once', async () => {
    const schema = 'svc_two';
    const role = roles[1]!;
    const { migration, counter } = widgetsMigration(schema, role);
    const s = { schema, role, password: 'secret-2', migrations: [migration] };
    await expect(Promise.all([provisionServiceSchema(env.DATABASE_URL!, s), provisionServiceSchema(env.DATABASE_URL!, s)])).resolves.toBeDefined();
    expect(counter.runs).toBe(1);
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${schema}".schema_migrations`)).rows[0].n).toBe(1);
    expect((await admin.query('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = $1', [role])).rows[0].n).toBe(1);
  });

it('one role provisioned into two databases at the same time (two stacks, two deployments) both succeed', async () => {
    // Roles are the cluster's, not a database's: the lock must be too.
    for (let round = 0; round < 5; round++) {
      const runs = [env.DATABASE_URL!, raceUrl, env.DATABASE_URL!, raceUrl].map((url, i) => {
        const m = widgetsMigration(`svc_e${round}_${i}`, roles[0]!);
        return provisionServiceSchema(url, { schema: `svc_e${round}_${i}`, role: roles[0]!, password: 'secret-1', migrations: [m.migration] });
      });
      await expect(Promise.all(runs)).resolves.toBeDefined();
    }
  });

  it('two services provisioning their own schemas at the same time both succeed', async () => {
    for (let round = 0; round < 5; round++) {
      const a = widgetsMigration(`svc_c${round}`, roles[2]!);
      const b = widgetsMigration(`svc_d${round}`, roles[3]!);
      await expect(
        Promise.all([
          provisionServiceSchema(env.DATABASE_URL!, { schema: `svc_c${round}`, role: roles[2]!, password: 'c', migrations: [a.migration] }),
          provisionServiceSchema(env.DATABASE_URL!, { schema: `svc_d${round}`, role: roles[3]!, password: 'd', migrations: [b.migration] }),
        ]),
      ).resolves.toBeDefined();
      expect([a.counter.runs, b.counter.runs]).toEqual([1, 1]);
    }
  });
});
