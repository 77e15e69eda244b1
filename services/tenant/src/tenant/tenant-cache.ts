import Redis from 'ioredis';
import { Tenant } from '@keel/contracts';

const TTL_SECONDS = 3_600;
/** Tenants whose last write failed, kept to write again; beyond this the whole cache is cleared instead. */
const MAX_UNSYNCED = 10_000;

/**
 * Writes a tenant's entries (by id, and its slug → id) unless the cache already holds a newer
 * version: KEYS = id key, slug key; ARGV = JSON, version, TTL, id, and whether an equal version
 * replaces the entry ('1' for the projection's writes, which are the model; '0' for a fill from a
 * read, which only adds what is absent or older). An entry that does not parse is replaced.
 * Slugs never change hands (a reserved slug stays its tenant's), so the slug key follows the id key.
 */
const WRITE_LUA = `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, held = pcall(cjson.decode, cur)
  local v = ok and type(held) == 'table' and tonumber(held.version) or nil
  local new = tonumber(ARGV[2])
  if v and (v > new or (v == new and ARGV[5] ~= '1')) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
return 1`;

type WithWrite = Redis & { keelTenantWrite(idKey: string, slugKey: string, json: string, version: number, ttl: number, id: string, replaceEqual: '0' | '1'): Promise<number> };

/**
 * Tenant lookups by id or slug. Written from the projection's batches (the model: they replace
 * an entry of the same or an older version) and on a miss from Postgres (a fill: only what is
 * absent or older), so neither a slow reader nor a late retry ever puts an older tenant over a
 * newer one. A write that fails (Redis away) is not dropped: the newest version of each tenant is
 * kept and written again until Redis takes it, so a suspension reaches the cache even when Redis
 * blinked at the moment it was applied (otherwise the entry would stay stale until its TTL).
 * Everything here can be rebuilt.
 */
export class TenantCache {
  private readonly redis: WithWrite;
  private readonly unsynced = new Map<string, Tenant>();
  private clearNeeded = false;
  private retry?: NodeJS.Timeout;
  private retryMs: number;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly retryDelays = { initialMs: 250, maxMs: 10_000 },
  ) {
    if (!(redis as unknown as Partial<WithWrite>).keelTenantWrite) redis.defineCommand('keelTenantWrite', { numberOfKeys: 2, lua: WRITE_LUA });
    this.redis = redis as unknown as WithWrite;
    this.retryMs = retryDelays.initialMs;
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
      await this.write(tenants, '1');
    } catch (error) {
      this.keep(tenants);
      throw error;
    }
  }

  /** A reader's write after a miss: adds the tenant unless the cache holds it at this version or newer. */
  async fill(t: Tenant): Promise<void> {
    await this.write([t], '0');
  }

  /** Drops the entries of these tenants (by id and by slug). On failure the whole cache is cleared later. */
  async forget(tenants: { id: string; slug: string }[]): Promise<void> {
    try {
      await Promise.all(this.unlink(tenants.flatMap((t) => [this.idKey(t.id), this.slugKey(t.slug)])));
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
    } catch (error) {
      this.needClear();
      throw error;
    }
  }

  private async write(tenants: Tenant[], replaceEqual: '0' | '1'): Promise<void> {
    const p = this.redis.pipeline() as unknown as { keelTenantWrite: (...a: unknown[]) => void; exec: () => Promise<[Error | null, unknown][] | null> };
    for (const t of tenants) p.keelTenantWrite(this.idKey(t.id), this.slugKey(t.slug), JSON.stringify(t), t.version, TTL_SECONDS, t.id, replaceEqual);
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
    if (this.retry) return;
    this.retry = setTimeout(() => void this.resync(), this.retryMs);
    this.retry.unref();
  }

  private async resync(): Promise<void> {
    this.retry = undefined;
    try {
      if (this.clearNeeded) {
        this.clearNeeded = false;
        await this.clear();
      }
      const batch = [...this.unsynced.values()];
      if (batch.length) {
        await this.write(batch, '1');
        // Only what was written: a newer version that failed meanwhile stays to be written.
        for (const t of batch) if (this.unsynced.get(t.id) === t) this.unsynced.delete(t.id);
      }
      this.retryMs = this.retryDelays.initialMs;
    } catch {
      this.retryMs = Math.min(this.retryMs * 2, this.retryDelays.maxMs);
      this.schedule();
    }
  }
}
