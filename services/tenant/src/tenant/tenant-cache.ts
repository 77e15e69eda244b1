import Redis from 'ioredis';
import { Tenant } from '@keel/contracts';

const TTL_SECONDS = 3_600;
/** Tenants whose last write failed, kept to write again; beyond this the whole cache is cleared instead. */
const MAX_UNSYNCED = 10_000;

/**
 * Writes a tenant's entries (by id, and its slug → id) unless the cache holds a newer version:
 * KEYS = id key, slug key; ARGV = JSON, version, TTL, id, mode. Modes: 'put', the projection's
 * write (the model: it replaces an equal or older version, or adds); 'fill', a reader's after a
 * miss (adds, or replaces an older version); 'retry', a failed put made again (replaces an older
 * version that is still there, never adds: an entry dropped meanwhile, by a forget, a clear or its
 * TTL, stays dropped, and readers read Postgres). An entry that does not parse counts as older.
 * Slugs never change hands (a reserved slug stays its tenant's), so the slug key follows the id key.
 */
const WRITE_LUA = `
local cur = redis.call('GET', KEYS[1])
local mode = ARGV[5]
if not cur then
  if mode == 'retry' then return 0 end
else
  local ok, held = pcall(cjson.decode, cur)
  local v = ok and type(held) == 'table' and tonumber(held.version) or nil
  local new = tonumber(ARGV[2])
  if v and (v > new or (v == new and mode ~= 'put')) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
return 1`;

type Mode = 'put' | 'fill' | 'retry';
/** Tenants written again per pipeline; each chunk leaves the queue once written. */
const RETRY_CHUNK = 500;

type WithWrite = Redis & { keelTenantWrite(idKey: string, slugKey: string, json: string, version: number, ttl: number, id: string, mode: Mode): Promise<number> };

/**
 * Tenant lookups by id or slug. Written from the projection's batches (the model: they replace an
 * entry of the same or an older version) and on a miss from Postgres (a fill: over an older entry
 * or none), so a slow reader never puts an older tenant over a newer one. A write that fails (Redis
 * away) is not dropped: the newest version of each tenant is kept and written again over the older
 * entry still there, as soon as Redis is ready again and then with back-off, so a suspension
 * reaches the cache although Redis blinked when it was applied (the stale entry would otherwise
 * last its TTL). Past MAX_UNSYNCED waiting tenants, or when a forget fails, the whole cache is
 * cleared instead. Everything here can be rebuilt.
 */
export class TenantCache {
  private readonly redis: WithWrite;
  private readonly unsynced = new Map<string, Tenant>();
  private clearNeeded = false;
  private retry?: NodeJS.Timeout;
  private retrying = false;
  private closed = false;
  private retryMs: number;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly retryDelays = { initialMs: 250, maxMs: 10_000 },
  ) {
    if (!(redis as unknown as Partial<WithWrite>).keelTenantWrite) redis.defineCommand('keelTenantWrite', { numberOfKeys: 2, lua: WRITE_LUA });
    this.redis = redis as unknown as WithWrite;
    this.retryMs = retryDelays.initialMs;
    // Redis back: what waits is written at once, not at the next back-off step.
    redis.on('ready', () => {
      if (!this.unsynced.size && !this.clearNeeded) return;
      clearTimeout(this.retry);
      this.retry = undefined;
      this.retryMs = this.retryDelays.initialMs;
      void this.resync();
    });
  }

  /** Nest's shutdown: no more retries (what waits goes with its TTL). */
  onModuleDestroy(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.retry = undefined;
  }

  private idKey(id: string) {
    return `${this.prefix}tenant:id:${id}`;
  }
  private slugKey(slug: string) {
    return `${this.prefix}tenant:slug:${slug}`;
  }

  async get(idOrSlug: string, isId: boolean): Promise<Tenant | null> {
    const id = isId ? idOrSlug : await this.redis.get(this.slugKey(idOrSlug));
    if (!id) return null;
    const text = await this.redis.get(this.idKey(id));
    return text ? (JSON.parse(text) as Tenant) : null;
  }

  /** The projection's write: replaces what the cache holds unless it is newer. On failure the tenants are written again later. */
  async put(tenants: Tenant[]): Promise<void> {
    if (!tenants.length) return;
    try {
      await this.write(tenants, 'put');
    } catch (error) {
      this.keep(tenants);
      throw error;
    }
    // Written: an older version waiting to be written again is no longer needed.
    for (const t of tenants) {
      const waiting = this.unsynced.get(t.id);
      if (waiting && waiting.version <= t.version) this.unsynced.delete(t.id);
    }
  }

  /** A reader's write after a miss: adds the tenant unless the cache holds it at this version or newer. */
  async fill(t: Tenant): Promise<void> {
    await this.write([t], 'fill');
  }

  /** Drops the entries of these tenants (by id and by slug). On failure the whole cache is cleared later. */
  async forget(tenants: { id: string; slug: string }[]): Promise<void> {
    try {
      await Promise.all(this.unlink(tenants.flatMap((t) => [this.idKey(t.id), this.slugKey(t.slug)])));
      // Gone: a retry would not write them anyway (it only replaces what is there).
      for (const t of tenants) this.unsynced.delete(t.id);
    } catch (error) {
      this.needClear();
      throw error;
    }
  }

  /**
   * Drops every entry: large SCAN steps, each step's keys unlinked (freed by Redis in the background)
   * while the next step is asked for. On failure it is tried again later.
   */
  async clear(): Promise<void> {
    try {
      const unlinked: Promise<number>[] = [];
      let cursor = '0';
      do {
        const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${this.prefix}tenant:*`, 'COUNT', 10_000);
        unlinked.push(...this.unlink(keys));
        cursor = next;
      } while (cursor !== '0');
      await Promise.all(unlinked);
      this.clearNeeded = false;
      this.unsynced.clear();
    } catch (error) {
      this.needClear();
      throw error;
    }
  }

  private async write(tenants: Tenant[], mode: Mode): Promise<void> {
    const p = this.redis.pipeline() as unknown as { keelTenantWrite: (...a: unknown[]) => void; exec: () => Promise<[Error | null, unknown][] | null> };
    for (const t of tenants) p.keelTenantWrite(this.idKey(t.id), this.slugKey(t.slug), JSON.stringify(t), t.version, TTL_SECONDS, t.id, mode);
    const results = await p.exec();
    const failed = results?.find(([err]) => err)?.[0];
    if (failed) throw failed;
  }

  /** UNLINK in steps of 1,000 keys (freed by Redis in the background); one promise per step. */
  private unlink(keys: string[]): Promise<number>[] {
    const steps: Promise<number>[] = [];
    for (let i = 0; i < keys.length; i += 1_000) steps.push(this.redis.unlink(...keys.slice(i, i + 1_000)));
    return steps;
  }

  private keep(tenants: Tenant[]): void {
    for (const t of tenants) {
      const held = this.unsynced.get(t.id);
      if (!held || held.version <= t.version) this.unsynced.set(t.id, t);
    }
    if (this.unsynced.size > MAX_UNSYNCED) this.needClear();
    this.schedule();
  }

  private needClear(): void {
    this.clearNeeded = true;
    // A clear drops every entry: the tenants waiting to be written are then simply absent (read from Postgres).
    this.unsynced.clear();
    this.schedule();
  }

  private schedule(): void {
    if (this.retry || this.retrying || this.closed) return;
    this.retry = setTimeout(() => void this.resync(), this.retryMs);
    this.retry.unref();
  }

  /** One retry at a time: the clear first when one is due, then the waiting tenants a chunk at a time. */
  private async resync(): Promise<void> {
    this.retry = undefined;
    if (this.retrying || this.closed) return;
    this.retrying = true;
    let failed = false;
    try {
      if (this.clearNeeded) await this.clear();
      const waiting = [...this.unsynced.values()];
      for (let i = 0; i < waiting.length; i += RETRY_CHUNK) {
        const chunk = waiting.slice(i, i + RETRY_CHUNK);
        await this.write(chunk, 'retry');
        // Only what was written: a newer version that failed meanwhile stays to be written.
        for (const t of chunk) if (this.unsynced.get(t.id) === t) this.unsynced.delete(t.id);
      }
      this.retryMs = this.retryDelays.initialMs;
    } catch {
      failed = true;
      this.retryMs = Math.min(this.retryMs * 2, this.retryDelays.maxMs);
    } finally {
      this.retrying = false;
    }
    // What failed now, or failed meanwhile, waits for the next step.
    if (failed || this.unsynced.size || this.clearNeeded) this.schedule();
  }
}
