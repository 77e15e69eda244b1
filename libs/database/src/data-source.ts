import { DataSource } from 'typeorm';

export interface ServiceDataSourceOptions {
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
}

/** A TypeORM DataSource bound to one service schema; `synchronize` is always off. */
export async function openDataSource(o: ServiceDataSourceOptions): Promise<DataSource> {
  if (o.scope !== undefined && !/^[A-Za-z0-9*_-]{1,64}$/.test(o.scope)) throw new Error(`Invalid tenant scope for a pool: ${JSON.stringify(o.scope)}`);
  const ds = new DataSource({
    type: 'postgres',
    url: o.url,
    schema: o.schema,
    synchronize: false,
    migrationsRun: false,
    applicationName: o.applicationName,
    extra: { max: o.poolSize ?? 10, options: `-c search_path=${o.schema}${o.scope !== undefined ? ` -c keel.tenant_id=${o.scope}` : ''}` },
  });
  return ds.initialize();
}
