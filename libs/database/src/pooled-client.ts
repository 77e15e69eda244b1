import { DataSource } from 'typeorm';
import { PostgresDriver } from 'typeorm/driver/postgres/PostgresDriver';

/** A pg client as the pool lends it: its queries answer the whole result (`rows`, or `rows` as arrays with rowMode). */
export interface PooledClient {
  query(text: string, params?: unknown[]): Promise<{ rows: any[] }>;
  query(config: { text: string; values: unknown[]; rowMode: 'array' }): Promise<{ rows: unknown[][] }>;
}

interface LentClient extends PooledClient {
  on(event: 'error', fn: (err: Error) => void): void;
  removeListener(event: 'error', fn: (err: Error) => void): void;
}

/**
 * Lends `use` a connection of the data source's pool, for work that needs the driver itself (one
 * transaction over many round trips, rows as arrays), and gives it back afterwards.
 *
 * While a connection is lent, the pool no longer listens for its errors: a server that ends the
 * session between two queries (a restart: 57P01) would emit an `error` nobody handles, which
 * ends the process. Here that error is caught and the connection is discarded rather than given
 * back. When `use` throws, whatever transaction it left open is rolled back; a connection that
 * cannot even roll back is discarded too.
 */
export async function withPooledClient<T>(ds: DataSource, use: (client: PooledClient) => Promise<T>): Promise<T> {
  const [client, release] = (await (ds.driver as PostgresDriver).obtainMasterConnection()) as [LentClient, (error?: unknown) => void];
  let broken: unknown;
  const onError = (err: Error) => (broken ??= err);
  client.on('error', onError);
  try {
    return await use(client);
  } catch (error) {
    if (broken === undefined) await client.query('ROLLBACK').catch((e: unknown) => (broken = e));
    throw error;
  } finally {
    // A discarded connection may still report its end: keep listening (to nothing) for it.
    if (broken === undefined) client.removeListener('error', onError);
    release(broken);
  }
}
