import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { Subscription } from 'nats';
import { isTenantId, Tenant } from '@keel/contracts';
import { decodeJson, eventsOf, MESSAGING, Messaging, RpcClient } from '@keel/messaging';

const TTL_MS = 60_000;

/** Size limits of the directory; a field so that tests can make them small. */
export interface TenantDirectoryLimits {
  /** Tenants kept (and their slugs). */
  maxEntries: number;
  /** Tenants whose newest heard version is remembered (the fences). */
  maxFences: number;
  /**
   * After a fence was evicted, for this long a tenant without a fence is read from its log, not
   * the read model: the forgotten fence may have been for a change the read model has not
   * applied yet. Generous: far longer than any projection lag that is not itself an incident.
   */
  forgottenFenceMs: number;
}

/**
 * The gateway's in-memory view of tenants, so resolving a tenant costs no network hop.
 *
 * It is fenced by version: every tenant event is also heard here (a plain NATS subscription
 * on the event subjects), which records the newest version of that tenant; an entry older
 * than that is never served nor stored. A reconnect (events may have been missed) empties
 * it, and entries expire after a minute in any case. `consistentWith` reads bypass it. An
 * entry found older than a heard event is replaced from the tenant's log, not the read model.
 *
 * Bounded: at most `maxEntries` tenants and `maxFences` fences, least recently used evicted
 * first. Evicting an entry only costs a lookup later. Evicting a fence would let a lagging
 * read model's older version through, so an evicted fence takes its entry with it, and for
 * `forgottenFenceMs` afterwards a tenant with no fence is read from its log.
 */
@Injectable()
export class TenantDirectory implements OnModuleInit, OnModuleDestroy {
  readonly limits: TenantDirectoryLimits = { maxEntries: 50_000, maxFences: 200_000, forgottenFenceMs: 10 * 60_000 };
  private readonly byId = new Map<string, { tenant: Tenant; at: number }>();
  private readonly idBySlug = new Map<string, string>();
  private readonly latest = new Map<string, number>();
  private readonly serialised = new WeakMap<Tenant, string>();
  private fenceEvictedAt = Number.NEGATIVE_INFINITY;
  private sub?: Subscription;

  constructor(
    @Inject(MESSAGING) private readonly m: Messaging,
    private readonly rpc: RpcClient,
  ) {}

  /** How many tenants, slugs and fences are held (for tests and metrics). */
  get size(): { entries: number; slugs: number; fences: number } {
    return { entries: this.byId.size, slugs: this.idBySlug.size, fences: this.latest.size };
  }

  onModuleInit(): void {
    this.sub = this.m.nc.subscribe(`${this.m.prefix}evt.*.tenant.tenant.*`, {
      callback: (err, msg) => {
        if (err) return;
        try {
          // One envelope, or a decision of several events (a JSON array of envelopes): each fences.
          for (const e of eventsOf(decodeJson<unknown>(msg.data))) {
            if ((this.latest.get(e.aggregateId) ?? 0) < e.aggregateVersion) this.fence(e.aggregateId, e.aggregateVersion);
          }
        } catch {
          this.byId.clear();
          this.idBySlug.clear();
        }
      },
    });
    void (async () => {
      for await (const s of this.m.nc.status()) {
        if (s.type === 'disconnect' || s.type === 'reconnect') {
          this.byId.clear();
          this.idBySlug.clear();
        }
      }
    })().catch(() => undefined);
  }

  onModuleDestroy(): void {
    this.sub?.unsubscribe();
  }

  /**
   * The tenant as `get` would answer it from memory, at once; undefined when `get` has to ask (not
   * held, expired, or older than a change heard).
   */
  cached(idOrSlug: string): Tenant | undefined {
    const isId = isTenantId(idOrSlug);
    const id = isId ? idOrSlug : this.idBySlug.get(idOrSlug);
    const entry = id ? this.byId.get(id) : undefined;
    if (!entry || Date.now() - entry.at >= TTL_MS || entry.tenant.version < (this.latest.get(id!) ?? 0)) return undefined;
    return isId || entry.tenant.slug === idOrSlug ? entry.tenant : undefined;
  }

  /** A tenant's JSON, as answered: serialised once per version held (the objects are never changed). */
  json(tenant: Tenant): string {
    let text = this.serialised.get(tenant);
    if (text === undefined) {
      text = JSON.stringify(tenant);
      this.serialised.set(tenant, text);
    }
    return text;
  }

  async get(idOrSlug: string, consistentWith?: number): Promise<Tenant> {
    if (consistentWith === undefined) {
      const held = this.cached(idOrSlug);
      if (held) return held;
      const id = isTenantId(idOrSlug) ? idOrSlug : this.idBySlug.get(idOrSlug);
      const entry = id ? this.byId.get(id) : undefined;
      const newest = id ? (this.latest.get(id) ?? 0) : 0;
      if (id && (newest > (entry?.tenant.version ?? 0) || this.mayHaveForgotten(id))) {
        // A change was heard that the read model may not have applied yet (a suspension, new
        // IP ranges), or its fence was evicted: ask the tenant's log, so it applies here at once.
        return this.fromLog(id);
      }
    }
    const tenant = await this.rpc.request<Tenant>('qry.tenant.get', { idOrSlug, ...(consistentWith !== undefined ? { consistentWith } : {}) });
    if (tenant.version < (this.latest.get(tenant.id) ?? 0) || this.mayHaveForgotten(tenant.id)) return this.fromLog(tenant.id);
    this.remember(tenant);
    return tenant;
  }

  /** Keeps a tenant as a command or query returned it, unless a newer version is known. */
  remember(tenant: Tenant): void {
    if (tenant.version < (this.latest.get(tenant.id) ?? 0)) return;
    this.fence(tenant.id, tenant.version);
    const previous = this.byId.get(tenant.id);
    if (previous && previous.tenant.slug !== tenant.slug && this.idBySlug.get(previous.tenant.slug) === tenant.id) this.idBySlug.delete(previous.tenant.slug);
    this.byId.delete(tenant.id);
    this.byId.set(tenant.id, { tenant, at: Date.now() });
    this.idBySlug.set(tenant.slug, tenant.id);
    while (this.byId.size > this.limits.maxEntries) this.evictEntry(this.byId.keys().next().value!);
  }

  private async fromLog(id: string): Promise<Tenant> {
    const tenant = await this.rpc.request<Tenant>('qry.tenant.current', { idOrSlug: id });
    this.remember(tenant);
    return tenant;
  }

  /** True when `id` has no fence but one may have been evicted while it could still matter. */
  private mayHaveForgotten(id: string): boolean {
    return !this.latest.has(id) && Date.now() - this.fenceEvictedAt < this.limits.forgottenFenceMs;
  }

  private fence(id: string, version: number): void {
    this.latest.delete(id);
    this.latest.set(id, version);
    while (this.latest.size > this.limits.maxFences) {
      const oldest = this.latest.keys().next().value!;
      this.latest.delete(oldest);
      // The entry goes with its fence: nothing is served that no fence guards.
      this.evictEntry(oldest);
      this.fenceEvictedAt = Date.now();
    }
  }

  private evictEntry(id: string): void {
    const entry = this.byId.get(id);
    if (!entry) return;
    this.byId.delete(id);
    if (this.idBySlug.get(entry.tenant.slug) === id) this.idBySlug.delete(entry.tenant.slug);
  }
}
