import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { ensureDatabase, openDataSource, withPooledClient } from '@keel/database';
import { cleanupEnv, eventually, isolatedEnv } from '@keel/testing';

/** withPooledClient against the real PostgreSQL, whose server ends a session while it is lent. */
describe('withPooledClient', () => {
  const env = isolatedEnv('pooledclient');
  let ds: DataSource;
  let admin: Client;

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    ds = await openDataSource({ url: env.DATABASE_URL!, schema: 'public', applicationName: 'pooled-client-test', poolSize: 2 });
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.end();
    await ds?.destroy();
    await cleanupEnv(env);
  });

  const backendsOf = async (name: string) =>
    (await admin.query(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, [name])).rows.map((r) => Number(r.pid));

  it('survives the server ending the session between two queries: the error is the work’s, the connection is discarded, the process goes on', async () => {
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      let lentPid = 0;
      const work = withPooledClient(ds, async (client) => {
        await client.query('BEGIN');
        lentPid = Number((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
        // The server ends the session (a restart's fast shutdown sends the same 57P01) while no query runs.
        await admin.query('SELECT pg_terminate_backend($1)', [lentPid]);
        await eventually(() => backendsOf('pooled-client-test'), (pids) => !pids.includes(lentPid), { what: 'the session to end' });
        await client.query('SELECT 1');
      });
      await expect(work).rejects.toThrow();
      expect(uncaught).toEqual([]);

      // The pool lends a new connection, not the dead one.
      const pid = await withPooledClient(ds, async (client) => Number((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid));
      expect(pid).not.toBe(lentPid);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  it('rolls back what a failing use left open and gives the connection back for reuse', async () => {
    await admin.query('CREATE TABLE IF NOT EXISTS pooled_client_rows (n integer)');
    await expect(
      withPooledClient(ds, async (client) => {
        await client.query('BEGIN');
        await client.query('INSERT INTO pooled_client_rows VALUES (1)');
        throw new Error('the work fails');
      }),
    ).rejects.toThrow('the work fails');
    const { rows } = await admin.query('SELECT count(*)::int AS n FROM pooled_client_rows');
    expect(rows[0].n).toBe(0);
    // Back in the pool, outside any transaction.
    const state = await withPooledClient(ds, async (client) => (await client.query(`SELECT now() = statement_timestamp() AS outside`)).rows[0].outside);
    expect(state).toBe(true);
  });
});
