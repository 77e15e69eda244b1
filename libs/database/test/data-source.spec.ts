import { createServer, Server, Socket } from 'node:net';
import { AddressInfo } from 'node:net';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { parseConfig, serviceDatabaseUrl } from '@keel/config';
import { ensureDatabase, openDataSource, postgresCheck } from '@keel/database';
import { isDependencyOutage } from '@keel/messaging';
import { cleanupEnv, eventually, freePort, isolatedEnv } from '@keel/testing';

async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: Error) => error,
  );
}

/** A TCP server that accepts connections and never says a word, like a Postgres host that hangs. */
async function silentServer(): Promise<{ server: Server; port: number; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server = createServer((s) => void sockets.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as AddressInfo).port, sockets };
}

/** Pool timeouts and how their failures are classified, against the real PostgreSQL. */
describe('openDataSource timeouts', () => {
  const env = isolatedEnv('pooltimeouts');
  const opened: DataSource[] = [];
  let admin: Client;
  const open = async (o: Partial<Parameters<typeof openDataSource>[0]> = {}) => {
    const ds = await openDataSource({ url: env.DATABASE_URL!, schema: 'public', applicationName: 'pool-timeouts-test', ...o });
    opened.push(ds);
    return ds;
  };

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
  });

  afterAll(async () => {
    for (const ds of opened) await ds.destroy().catch(() => undefined);
    await admin?.end();
    await cleanupEnv(env);
  });

  it('sets statement_timeout and idle_in_transaction_session_timeout on every connection, by default', async () => {
    const ds = await open();
    const [s] = await ds.query(`SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS it`);
    expect(s).toEqual({ st: '30s', it: '15s' });
  });

  it('takes the timeouts from the URL serviceDatabaseUrl writes, from KEEL_DB_*_TIMEOUT_MS', async () => {
    const config = parseConfig({ DATABASE_URL: env.DATABASE_URL, KEEL_DB_STATEMENT_TIMEOUT_MS: '1234', KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: '4321' });
    // The admin user stands in for a service role: only the parameters matter here.
    const url = new URL(serviceDatabaseUrl(config, 'x'));
    const admin = new URL(env.DATABASE_URL!);
    url.username = admin.username;
    url.password = admin.password;
    const ds = await open({ url: url.toString() });
    const [s] = await ds.query(`SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS it`);
    expect(s).toEqual({ st: '1234ms', it: '4321ms' });
  });

  it('cancels a statement that runs past statement_timeout, as an outage (57014), and the pool goes on', async () => {
    const ds = await open({ timeouts: { statementMs: 200 } });
    const started = Date.now();
    const error = await rejection(ds.query('SELECT pg_sleep(10)'));
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((error as { driverError?: { code?: string } }).driverError?.code ?? error.code).toBe('57014');
    expect(isDependencyOutage(error)).toBe(true);
    expect(await ds.query('SELECT 1 AS one')).toEqual([{ one: 1 }]);
  });

  it('ends a session left idle inside a transaction', async () => {
    const ds = await open({ timeouts: { idleInTransactionMs: 200 }, applicationName: 'pool-timeouts-idle' });
    const runner = ds.createQueryRunner();
    await runner.connect();
    await runner.startTransaction();
    const [{ pid }] = await runner.query('SELECT pg_backend_pid() AS pid');
    // The server ends that backend by itself; nothing here terminates it.
    await eventually(
      async () => (await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount,
      (n) => n === 0,
      { what: 'the server to end the idle transaction' },
    );
    // The server ended the session: what the transaction meets next is a lost connection (503,
    // logged as a warning), and the pool goes on with a new one.
    const error = await rejection(runner.query('SELECT 1'));
    expect(error.name).toBe('QueryRunnerAlreadyReleasedError');
    expect(isDependencyOutage(error)).toBe(true);
    await runner.release().catch(() => undefined);
    expect(await ds.query('SELECT 1 AS one')).toEqual([{ one: 1 }]);
  });

  it('gives up connecting to a host that accepts and never answers, after connectMs, as an outage', async () => {
    const silent = await silentServer();
    try {
      const started = Date.now();
      const error = await rejection(open({ url: `postgres://postgres@127.0.0.1:${silent.port}/x`, timeouts: { connectMs: 300 } }));
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(isDependencyOutage(error)).toBe(true);
    } finally {
      for (const s of silent.sockets) s.destroy();
      silent.server.close();
    }
  });

  it('answers a checkout within connectMs when every connection of the pool is busy', async () => {
    const ds = await open({ poolSize: 1, timeouts: { connectMs: 300 } });
    const busy = ds.query('SELECT pg_sleep(3)');
    const started = Date.now();
    const error = await rejection(ds.query('SELECT 1'));
    expect(Date.now() - started).toBeLessThan(2_500);
    expect(isDependencyOutage(error)).toBe(true);
    await busy;
  });

  it('classifies a refused connection and a backend ended by the server as outages, and a constraint violation as not', async () => {
    const closed = await freePort();
    expect(isDependencyOutage(await rejection(open({ url: `postgres://postgres@127.0.0.1:${closed}/x`, timeouts: { connectMs: 1_000 } })))).toBe(true);

    const ds = await open({ poolSize: 1, applicationName: 'pool-timeouts-terminated' });
    const [{ pid }] = await ds.query('SELECT pg_backend_pid() AS pid');
    const running = rejection(ds.query('SELECT pg_sleep(10)'));
    await eventually(
      async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid])).rowCount,
      (n) => n === 1,
      { what: 'the sleep to be running' },
    );
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    const terminated = await running;
    expect((terminated as { driverError?: { code?: string } }).driverError?.code ?? terminated.code).toBe('57P01');
    expect(isDependencyOutage(terminated)).toBe(true);

    // The pool may hand out the dead connection once more: that, too, is an outage.
    const next = await ds.query('SELECT 1 AS one').catch((e: unknown) => e);
    if (next instanceof Error) expect(isDependencyOutage(next)).toBe(true);
    else expect(next).toEqual([{ one: 1 }]);
    await eventually(() => ds.query('SELECT 1 AS one'), (rows) => rows.length === 1, { what: 'the pool to serve again' });

    const bug = await rejection(ds.query('SELECT 1/0'));
    expect(isDependencyOutage(bug)).toBe(false);
    const typo = await rejection(ds.query('SELEC 1'));
    expect(isDependencyOutage(typo)).toBe(false);
  });

  it('postgresCheck fails within its own timeout when no connection can be had', async () => {
    const ds = await open({ poolSize: 1, timeouts: { connectMs: 5_000 } });
    const busy = ds.query('SELECT pg_sleep(2)');
    const started = Date.now();
    await expect(postgresCheck(ds, 200).check()).rejects.toThrow('Postgres did not answer within 200 ms');
    expect(Date.now() - started).toBeLessThan(1_500);
    await busy;
    await expect(postgresCheck(ds, 200).check()).resolves.toBe(true);
  });
});
