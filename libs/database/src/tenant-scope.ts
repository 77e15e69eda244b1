import { DataSource, EntityManager } from 'typeorm';

/** The scope of a service's own cross-tenant work (ledger, projections, platform reads). */
export const ALL_TENANTS = '*';

/**
 * Runs `fn` in a transaction whose rows are limited to one tenant by row-level security
 * (`keel.tenant_id`, local to the transaction). A query outside such a scope sees nothing.
 */
export async function inTenant<T>(ds: DataSource | EntityManager, tenantId: string, fn: (m: EntityManager) => Promise<T>): Promise<T> {
  const run = async (m: EntityManager) => {
    await m.query(`SELECT set_config('keel.tenant_id', $1, true)`, [tenantId]);
    return fn(m);
  };
  return ds instanceof DataSource ? ds.transaction(run) : ds.transaction(run);
}

/** Sets the scope inside a transaction that is already open. */
export async function scopeTransaction(m: EntityManager, tenantId: string): Promise<void> {
  await m.query(`SELECT set_config('keel.tenant_id', $1, true)`, [tenantId]);
}

/**
 * Row-level security for a tenant-scoped table: rows whose `column` is the transaction's
 * tenant, or every row in the service's own cross-tenant scope. Without a scope: none.
 */
export function tenantPolicySql(schema: string, table: string, column = 'tenant_id'): string[] {
  const scope = `current_setting('keel.tenant_id', true)`;
  const rule = `(${column}::text = ${scope} OR ${scope} = '${ALL_TENANTS}')`;
  return [
    `ALTER TABLE "${schema}".${table} ENABLE ROW LEVEL SECURITY`,
    `CREATE POLICY tenant_isolation ON "${schema}".${table} USING ${rule} WITH CHECK ${rule}`,
  ];
}

/** One statement in a tenant's scope. */
export function tenantQuery<T = any>(ds: DataSource, tenantId: string, sql: string, params: unknown[] = []): Promise<T> {
  return inTenant(ds, tenantId, (m) => m.query(sql, params));
}
