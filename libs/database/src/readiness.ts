import { DataSource } from 'typeorm';

/** Readiness of a service's Postgres connection, for its ops server. */
export const postgresCheck = (ds: DataSource) => ({ name: 'postgres', check: async () => (await ds.query('SELECT 1')).length === 1 });
