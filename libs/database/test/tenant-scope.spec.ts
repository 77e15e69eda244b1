import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { DataSource, MigrationInterface, QueryRunner } from 'typeorm';
import { ALL_TENANTS, inTenant, openDataSource, provisionServiceSchema, tenantPolicySql, tenantQuery } from '@keel/database';
import { cleanupEnv, isolatedEnv } from '@keel/testing';

/** Row-level security through the helpers, as a service's own (non-owner) role sees it. */
describe('tenant scope', () => {
  const env = isolatedEnv('tenantscope');
  const role = `keel_t_${randomBytes(4).toString('hex')}_scope`;
  const schema = 'scoped';
  let main: DataSource;
  let crossTenant: DataSource;

  class CreateNotes1700000000000 implements MigrationInterface {
    name = 'CreateNotes1700000000000';
    async up(q: QueryRunner): Promise<void> {
      await q.query(`CREATE TABLE "${schema}".notes (id integer PRIMARY KEY, tenant_id text NOT NULL, body text NOT NULL)`);
      await q.query(`GRANT SELECT, INSERT, UPDATE ON "${schema}".notes TO "${role}"`);
      for (const sql of tenantPolicySql(schema, 'notes')) await q.query(sql);
      await q.query(`INSERT INTO "${schema}".notes VALUES (1, 't1', 'one'), (2, 't2', 'two'), (3, 't2', 'three')`);
    }
    async down(): Promise<void> {}
  }

  const url = () => {
    const u = new URL(env.DATABASE_URL!);
    u.username = role;
    u.password = 'scope-secret';
    return u.toString();
  };

  beforeAll(async () => {
    await provisionServiceSchema(env.DATABASE_URL!, { schema, role, password: 'scope-secret', migrations: [CreateNotes1700000000000] });
    main = await openDataSource({ url: url(), schema, applicationName: 'scope-test' });
    crossTenant = await openDataSource({ url: url(), schema, applicationName: 'scope-test-cross', poolSize: 2, scope: ALL_TENANTS });
  });

  afterAll(async () => {
    await main?.destroy();
    await crossTenant?.destroy();
    await cleanupEnv(env);
    const root = new URL(env.DATABASE_URL!);
    root.pathname = '/postgres';
    const c = new Client({ connectionString: root.toString() });
    await c.connect();
    await c.query(`DROP ROLE IF EXISTS "${role}"`).finally(() => c.end());
  });

  const ids = (rows: { id: number }[]) => rows.map((r) => r.id).sort();

  it('shows nothing without a scope, one tenant with its scope, every tenant with ALL_TENANTS', async () => {
    expect(await main.query('SELECT id FROM notes')).toEqual([]);
    expect(ids(await tenantQuery(main, 't2', 'SELECT id FROM notes'))).toEqual([2, 3]);
    expect(ids(await tenantQuery(main, ALL_TENANTS, 'SELECT id FROM notes'))).toEqual([1, 2, 3]);
    // The scope ends with its transaction: the pooled connection is unscoped again.
    expect(await main.query('SELECT id FROM notes')).toEqual([]);
  });

  it('refuses to write a row outside the transaction scope', async () => {
    await expect(inTenant(main, 't1', (m) => m.query(`INSERT INTO notes VALUES (9, 't2', 'smuggled')`))).rejects.toMatchObject({
      message: expect.stringContaining('row-level security'),
    });
    expect(ids(await tenantQuery(main, ALL_TENANTS, 'SELECT id FROM notes'))).toEqual([1, 2, 3]);
  });

  it('a pool opened with a scope carries it on every statement, without a transaction', async () => {
    expect(ids(await crossTenant.query('SELECT id FROM notes'))).toEqual([1, 2, 3]);
    const [rows] = await crossTenant.query(`UPDATE notes SET body = 'TWO' WHERE id = 2 RETURNING id`);
    expect(rows).toEqual([{ id: 2 }]);
    // A transaction on it can still narrow the scope.
    expect(ids(await tenantQuery(crossTenant, 't1', 'SELECT id FROM notes'))).toEqual([1]);
    expect(ids(await crossTenant.query('SELECT id FROM notes'))).toEqual([1, 2, 3]);
  });

  it('refuses a scope that could smuggle other settings into the connection options', async () => {
    await expect(openDataSource({ url: url(), schema, applicationName: 'x', scope: '* -c search_path=public' })).rejects.toThrow(/Invalid tenant scope/);
  });
});
