/** The schema a projection's read model is rebuilt in, beside the live one. */
export function shadowSchema(schema: string): string {
  return `${schema}_rebuild`;
}

export interface ShadowTable {
  name: string;
  /** The column row-level security keys on, as on the live table (omit for a table without RLS). */
  tenantColumn?: string;
}

/**
 * Migration SQL (run with admin credentials): the shadow schema with an empty copy of each read-model
 * table (same columns in the same order, defaults, constraints and indexes), the same tenant policy,
 * and the service role allowed to fill and empty it. A rebuild fills the copy while reads go on
 * against the live tables, then replaces the live rows in one short transaction.
 */
export function projectionShadowSql(schema: string, role: string, tables: ShadowTable[]): string[] {
  const shadow = shadowSchema(schema);
  const scope = `current_setting('keel.tenant_id', true)`;
  const sql = [`CREATE SCHEMA IF NOT EXISTS "${shadow}"`, `GRANT USAGE ON SCHEMA "${shadow}" TO ${role}`];
  for (const t of tables) {
    sql.push(`CREATE TABLE IF NOT EXISTS "${shadow}".${t.name} (LIKE "${schema}".${t.name} INCLUDING ALL)`);
    if (t.tenantColumn) {
      const rule = `(${t.tenantColumn}::text = ${scope} OR ${scope} = '*')`;
      sql.push(`ALTER TABLE "${shadow}".${t.name} ENABLE ROW LEVEL SECURITY`);
      sql.push(`DROP POLICY IF EXISTS tenant_isolation ON "${shadow}".${t.name}`);
      sql.push(`CREATE POLICY tenant_isolation ON "${shadow}".${t.name} USING ${rule} WITH CHECK ${rule}`);
    }
    sql.push(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "${shadow}".${t.name} TO ${role}`);
  }
  return sql;
}

/**
 * Migration SQL for the bookkeeping added after the first release: durable dead-letter resolution
 * and the rebuild coordination columns. Idempotent.
 */
export function projectionBookkeepingUpgradeSql(schema: string): string[] {
  return [
    `ALTER TABLE "${schema}".dead_letters ADD COLUMN IF NOT EXISTS resolution text CHECK (resolution IN ('retried', 'skipped'))`,
    `ALTER TABLE "${schema}".dead_letters ADD COLUMN IF NOT EXISTS resolved_at timestamptz`,
    `ALTER TABLE "${schema}".dead_letters ADD COLUMN IF NOT EXISTS resolved_by text`,
    `CREATE INDEX IF NOT EXISTS dead_letters_unresolved ON "${schema}".dead_letters (consumer, position) WHERE resolution IS NULL`,
    `ALTER TABLE "${schema}".projection_checkpoints ADD COLUMN IF NOT EXISTS rebuilding_since timestamptz`,
    `ALTER TABLE "${schema}".projection_checkpoints ADD COLUMN IF NOT EXISTS held_until timestamptz`,
    `ALTER TABLE "${schema}".projection_checkpoints ADD COLUMN IF NOT EXISTS rebuild_claim uuid`,
  ];
}
