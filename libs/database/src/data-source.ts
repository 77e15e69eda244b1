import { DataSource } from 'typeorm';

export interface ServiceDataSourceOptions {
  url: string;
  /** The service's own schema; the role's search_path points at it too. */
  schema: string;
  poolSize?: number;
  applicationName: string;
}

/** A TypeORM DataSource bound to one service schema; `synchronize` is always off. */
export async function openDataSource(o: ServiceDataSourceOptions): Promise<DataSource> {
  const ds = new DataSource({
    type: 'postgres',
    url: o.url,
    schema: o.schema,
    synchronize: false,
    migrationsRun: false,
    applicationName: o.applicationName,
    extra: { max: o.poolSize ?? 10, options: `-c search_path=${o.schema}` },
  });
  return ds.initialize();
}
