import Redis from 'ioredis';
import { Tenant } from '@keel/contracts';

const TTL_SECONDS = 3_600;

/**
 * Tenant lookups by id or slug. Filled and updated from the projection's events (which
 * overwrite), and on a miss from Postgres (which only fills what is absent, so a slow
 * reader never overwrites a newer entry). Everything here can be rebuilt.
 */
export class TenantCache {
  constructor(private readonly redis: Redis, private readonly prefix: string) {}

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

  async put(tenants: Tenant[]): Promise<void> {
    if (!tenants.length) return;
    const p = this.redis.pipeline();
    for (const t of tenants) {
      p.set(this.idKey(t.id), JSON.stringify(t), 'EX', TTL_SECONDS);
      p.set(this.slugKey(t.slug), t.id, 'EX', TTL_SECONDS);
    }
    await p.exec();
  }

  async fill(t: Tenant): Promise<void> {
    await this.redis
      .pipeline()
      .set(this.idKey(t.id), JSON.stringify(t), 'EX', TTL_SECONDS, 'NX')
      .set(this.slugKey(t.slug), t.id, 'EX', TTL_SECONDS, 'NX')
      .exec();
  }

  /** Drops the entries of these tenants (by id and by slug). */
  async forget(tenants: { id: string; slug: string }[]): Promise<void> {
    await Promise.all(this.unlink(tenants.flatMap((t) => [this.idKey(t.id), this.slugKey(t.slug)])));
  }

  /**
   * Drops every entry: large SCAN steps, each step's keys unlinked (freed by Redis in the background)
   * while the next step is asked for.
   */
  async clear(): Promise<void> {
    const unlinked: Promise<number>[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${this.prefix}tenant:*`, 'COUNT', 10_000);
      unlinked.push(...this.unlink(keys));
      cursor = next;
    } while (cursor !== '0');
    await Promise.all(unlinked);
  }

  /** UNLINK in steps of 1,000 keys (freed by Redis in the background); one promise per step. */
  private unlink(keys: string[]): Promise<number>[] {
    const steps: Promise<number>[] = [];
    for (let i = 0; i < keys.length; i += 1_000) steps.push(this.redis.unlink(...keys.slice(i, i + 1_000)));
    return steps;
  }
}
