import { DataSource } from 'typeorm';

/**
 * Readiness of a service's Postgres connection, for its ops server: one `SELECT 1` that must
 * answer within `timeoutMs` (the ops server bounds every check as well, this one is tighter
 * so a pool that is waiting for a connection does not hold the probe).
 */
export const postgresCheck = (ds: DataSource, timeoutMs = 2_000) => ({
  name: 'postgres',
  check: async () => {
    let timer: NodeJS.Timeout | undefined;
    try {
      const rows = await Promise.race([
        ds.query('SELECT 1'),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`Postgres did not answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      return (rows as unknown[]).length === 1;
    } finally {
      clearTimeout(timer);
    }
  },
});
