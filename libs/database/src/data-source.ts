import { DataSource } from 'typeorm';

/** Limits every pool has, so no caller waits forever on Postgres. */
export interface PoolTimeouts {
  /** A new connection (TCP, TLS, authentication) must be up within this; else the checkout fails. */
  connectMs: number;
  /** `statement_timeout`: the server cancels a statement running longer (SQLSTATE 57014). */
  statementMs: number;
  /** `idle_in_transaction_session_timeout`: the server ends a session idle this long inside a transaction. */
  idleInTransactionMs: number;
}

/** Used when neither the options nor the URL say otherwise (the defaults of `KEEL_DB_*_TIMEOUT_MS`). */
export const DEFAULT_POOL_TIMEOUTS: PoolTimeouts = { connectMs: 5_000, statementMs: 30_000, idleInTransactionMs: 15_000 };

export interface ServiceDataSourceOptions {
  /**
   * The role's connection string. It may carry the timeouts as parameters (`connect_timeout` in
   * seconds, `statement_timeout` and `idle_in_transaction_session_timeout` in milliseconds), as
   * `serviceDatabaseUrl` writes them.
   */
  url: string;
  /** The service's own schema; the role's search_path points at it too. */
  schema: string;
  poolSize?: number;
  applicationName: string;
  /**
   * A tenant scope (`keel.tenant_id`) set for the whole session of every connection, so a
   * single statement needs no transaction to carry it (one round trip instead of four). Only
   * for a separate, dedicated pool, typically `ALL_TENANTS` for the few statements that must
   * find a row in any tenant: the service's main pool keeps "no scope, no rows".
   */
  scope?: string;
  /** Overrides what the URL says, which overrides `DEFAULT_POOL_TIMEOUTS`. */
  timeouts?: Partial<PoolTimeouts>;
}

const positive = (value: string | null, scale: number, name: string): number | undefined => {
  if (value === null) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`Invalid ${name} in the database URL: ${JSON.stringify(value)} (a positive number)`);
  return Math.round(n * scale);
};

/** Splits the timeout parameters off a connection string: pg would otherwise let them override ours. */
export function poolTimeoutsOf(url: string, overrides: Partial<PoolTimeouts> = {}): { url: string; timeouts: PoolTimeouts } {
  const u = new URL(url);
  const fromUrl: Partial<PoolTimeouts> = {};
  const connect = positive(u.searchParams.get('connect_timeout'), 1000, 'connect_timeout');
  const statement = positive(u.searchParams.get('statement_timeout'), 1, 'statement_timeout');
  const idle = positive(u.searchParams.get('idle_in_transaction_session_timeout'), 1, 'idle_in_transaction_session_timeout');
  if (connect !== undefined) fromUrl.connectMs = connect;
  if (statement !== undefined) fromUrl.statementMs = statement;
  if (idle !== undefined) fromUrl.idleInTransactionMs = idle;
  for (const k of ['connect_timeout', 'statement_timeout', 'idle_in_transaction_session_timeout']) u.searchParams.delete(k);
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)) as Partial<PoolTimeouts>;
  return { url: u.toString(), timeouts: { ...DEFAULT_POOL_TIMEOUTS, ...fromUrl, ...defined } };
}

/** A TypeORM DataSource bound to one service schema; `synchronize` is always off. */
export async function openDataSource(o: ServiceDataSourceOptions): Promise<DataSource> {
  if (o.scope !== undefined && !/^[A-Za-z0-9*_-]{1,64}$/.test(o.scope)) throw new Error(`Invalid tenant scope for a pool: ${JSON.stringify(o.scope)}`);
  const { url, timeouts } = poolTimeoutsOf(o.url, o.timeouts);
  const ds = new DataSource({
    type: 'postgres',
    url,
    schema: o.schema,
    synchronize: false,
    migrationsRun: false,
    applicationName: o.applicationName,
    extra: {
      max: o.poolSize ?? 10,
      options: `-c search_path=${o.schema}${o.scope !== undefined ? ` -c keel.tenant_id=${o.scope}` : ''}`,
      // pg-pool: a checkout (new connection or a wait for a free one) fails after this.
      connectionTimeoutMillis: timeouts.connectMs,
      statement_timeout: timeouts.statementMs,
      idle_in_transaction_session_timeout: timeouts.idleInTransactionMs,
      // A peer gone without a FIN (a partition, a killed VM) is found by the kernel, not never.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    },
  });
  return ds.initialize();
}
