import { DataSource, EntityManager } from 'typeorm';
import { BILLING_SCHEMA } from './database/schema';

/** Scopes whose read models change together: a tenant's (budgets, plan quota, teams, its own prices), the platform's price list, and everything (a rebuild). */
export const ALL_SCOPES = '*';

const TTL_MS = 60_000;
const MAX_ENTRIES = 20_000;
const TABLE = `"${BILLING_SCHEMA}".cache_generations`;

interface Entry<T> {
  value: T;
  gens: string;
  until: number;
}

/**
 * What the hot path reads on every call (a tenant's budgets and team tree, the prices of a model),
 * kept in the process while its scopes' generations are those it was read at. A projection moves
 * a scope's generation in the transaction that changes it (`bump`), so a change and its new
 * generation become visible together: a call reads the generations (one small query, no
 * transaction) before using an entry, and an entry is read after them, so every billing process
 * uses a change from the first call that could see it (`consistentWith` holds). Entries also end
 * after a minute, as a bound on anything missed.
 */
export class CatalogueCache {
  private readonly entries = new Map<string, Entry<unknown>>();

  constructor(private readonly ds: DataSource) {}

  /** The current generations of `scopes` (always with everything's), as one string. */
  async generations(scopes: string[]): Promise<string> {
    const all = [...new Set([...scopes, ALL_SCOPES])].sort();
    const rows: { scope: string; gen: string }[] = await this.ds.query(`SELECT scope, gen FROM ${TABLE} WHERE scope = ANY($1)`, [all]);
    const gen = new Map(rows.map((r) => [r.scope, r.gen]));
    return all.map((s) => `${s}=${gen.get(s) ?? 0}`).join(';');
  }

  /** Whether `key` is kept, read at `gens`. */
  has(key: string, gens: string): boolean {
    const hit = this.entries.get(key);
    return !!hit && hit.gens === gens && hit.until > Date.now();
  }

  /** The cached value of `key` if it was read at `gens`; else `load()`, kept at `gens`. */
  async get<T>(key: string, gens: string, load: () => Promise<T>): Promise<T> {
    const now = Date.now();
    const hit = this.entries.get(key) as Entry<T> | undefined;
    if (hit && hit.gens === gens && hit.until > now) return hit.value;
    const value = await load();
    if (this.entries.size >= MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
    this.entries.delete(key);
    this.entries.set(key, { value, gens, until: now + TTL_MS });
    return value;
  }

  /** In the transaction that changes these scopes: their cached copies, in every process, are read again once it commits. */
  static async bump(m: EntityManager, scopes: Iterable<string>): Promise<void> {
    // In one order, so that two projections bumping the same scopes never deadlock.
    const unique = [...new Set(scopes)].sort();
    if (!unique.length) return;
    await m.query(`INSERT INTO ${TABLE} (scope, gen) SELECT unnest($1::text[]), 1 ON CONFLICT (scope) DO UPDATE SET gen = ${TABLE}.gen + 1`, [unique]);
  }

  /** After a rebuild swapped a read model: everything is read again. */
  async bumpAll(): Promise<void> {
    await CatalogueCache.bump(this.ds.manager, [ALL_SCOPES]);
  }
}
