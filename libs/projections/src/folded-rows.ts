import { EntityManager } from 'typeorm';
import { PositionedEvent } from '@keel/contracts';

/**
 * A read model of one row per aggregate, written a batch at a time: the batch's events are folded
 * into rows in memory (each row read once, only when an event needs what it holds), then every
 * changed row is written by one set-based statement. Live apply and a rebuild's pages go through
 * the same fold, so a rebuilt model cannot differ from the live one by the way it was written.
 */
export interface FoldedRows<Row extends object> {
  /** The table, unqualified (a rebuild points the search_path at the shadow schema). */
  table: string;
  /**
   * Every column of the table, in any order; JSON values of `jsonb` columns are objects. The rows
   * reach Postgres as `jsonb`, so a `json` column would store its value as `jsonb` prints it (keys
   * ordered, duplicates dropped): use `jsonb` columns.
   */
  columns: readonly (keyof Row & string)[];
  /** The primary key (one column, text-comparable, e.g. a uuid) and the version column it is guarded by. */
  key: keyof Row & string;
  version: keyof Row & string;
  /** The row an event belongs to. */
  keyOf(event: PositionedEvent): string;
  /**
   * Whether an event is a creation, which needs no stored row: its row is read only when another event
   * of the batch needs it. A creation whose row already exists changes nothing.
   */
  creates(event: PositionedEvent): boolean;
  /**
   * The row after the event, or undefined when the event does not change it. `row` is the current row
   * (undefined when there is none); only events newer than the row's version are passed. May throw
   * (e.g. a PermanentEventError for an event of an unknown row): the batch fails as a whole.
   */
  evolve(row: Row | undefined, event: PositionedEvent): Row | undefined;
}

const ident = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * Folds `events` (in order) into rows and writes the changed ones in one statement; returns the rows
 * written, as they now are. Rows are read by one `= ANY` lookup and written by one
 * `INSERT … SELECT … FROM jsonb_populate_recordset … ON CONFLICT (key) DO UPDATE … WHERE version is older`,
 * so a page costs two round trips whatever its size, and a row already newer is never overwritten.
 * The rows go as one `jsonb` document: parsed once, its nested values become `jsonb` columns without
 * being printed and parsed again (with `json`, Postgres parses each nested value a second time; see the
 * README's Performance section). Text Postgres cannot hold (a NUL, an unpaired surrogate) fails the
 * statement, as with `json`.
 */
export async function applyFolded<Row extends object>(m: EntityManager, model: FoldedRows<Row>, events: PositionedEvent[]): Promise<Row[]> {
  if (!events.length) return [];
  const version = (row: Row) => Number(row[model.version]);
  // Rows that some event needs as they are stored: every row with an event other than a creation.
  const needed = new Set<string>();
  for (const e of events) if (!model.creates(e)) needed.add(model.keyOf(e));
  const rows = new Map<string, Row | undefined>();
  if (needed.size) {
    const stored: Row[] = await m.query(`SELECT * FROM ${model.table} WHERE ${ident(model.key)}::text = ANY($1::text[])`, [[...needed]]);
    for (const r of stored) rows.set(String(r[model.key]), r);
  }
  const changed = new Set<string>();
  for (const e of events) {
    const key = model.keyOf(e);
    const row = rows.get(key);
    if (row && (model.creates(e) || Number(e.event.aggregateVersion) <= version(row))) continue;
    const next = model.evolve(row, e);
    if (next === undefined) continue;
    rows.set(key, next);
    changed.add(key);
  }
  if (!changed.size) return [];
  const out = [...changed].map((k) => rows.get(k)!);
  const cols = model.columns.map(ident);
  const set = model.columns.filter((c) => c !== model.key).map((c) => `${ident(c)} = excluded.${ident(c)}`);
  const returned: { key: string }[] = await m.query(
    `INSERT INTO ${model.table} (${cols.join(', ')})
     SELECT ${cols.join(', ')} FROM jsonb_populate_recordset(NULL::${model.table}, $1::jsonb)
     ON CONFLICT (${ident(model.key)}) DO UPDATE SET ${set.join(', ')}
     WHERE ${model.table}.${ident(model.version)} < excluded.${ident(model.version)}
     RETURNING ${ident(model.key)}::text AS key`,
    [JSON.stringify(out.map((row) => pick(row, model.columns)))],
  );
  // A creation whose row was not read and already existed (at its version or newer) was not written.
  if (returned.length === out.length) return out;
  const written = new Set(returned.map((r) => r.key));
  return out.filter((row) => written.has(String(row[model.key])));
}

function pick<Row extends object>(row: Row, columns: readonly (keyof Row & string)[]): Partial<Row> {
  const out: Partial<Row> = {};
  for (const c of columns) out[c] = row[c];
  return out;
}
