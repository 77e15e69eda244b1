import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { Subscription } from 'nats';
import { EventEnvelope, Tenant, tenantIdSchema } from '@keel/contracts';
import { decodeJson, MESSAGING, Messaging, RpcClient } from '@keel/messaging';

const TTL_MS = 60_000;
const MAX_ENTRIES = 50_000;

/**
 * The gateway's in-memory view of tenants, so resolving a tenant costs no network hop.
 *
 * It is fenced by version: every tenant event is also heard here (a plain NATS subscription
 * on the event subjects), which records the newest version of that tenant; an entry older
 * than that is never served nor stored. A reconnect (events may have been missed) empties
 * it, and entries expire after a minute in any case. `consistentWith` reads bypass it. An
 * entry found older than a heard event is replaced from the tenant's log, not the read model.
 */
@Injectable()
export class TenantDirectory implements OnModuleInit, OnModuleDestroy {
  private readonly byId = new Map<string, { tenant: Tenant; at: number }>();
  private readonly idBySlug = new Map<string, string>();
  private readonly latest = new Map<string, number>();
  private sub?: Subscription;

  constructor(
    @Inject(MESSAGING) private readonly m: Messaging,
    private readonly rpc: RpcClient,
  ) {}

  onModuleInit(): void {
    this.sub = this.m.nc.subscribe(`${this.m.prefix}evt.*.tenant.tenant.*`, {
      callback: (err, msg) => {
        if (err) return;
        try {
          const e = decodeJson<EventEnvelope>(msg.data);
          if ((this.latest.get(e.aggregateId) ?? 0) < e.aggregateVersion) this.latest.set(e.aggregateId, e.aggregateVersion);
        } catch {
          this.byId.clear();
        }
      },
    });
    void (async () => {
      for await (const s of this.m.nc.status()) {
        if (s.type === 'disconnect' || s.type === 'reconnect') this.byId.clear();
      }
    })().catch(() => undefined);
  }

  onModuleDestroy(): void {
    this.sub?.unsubscribe();
  }

  async get(idOrSlug: string, consistentWith?: number): Promise<Tenant> {
    if (consistentWith === undefined) {
      const id = tenantIdSchema.safeParse(idOrSlug).success ? idOrSlug : this.idBySlug.get(idOrSlug);
      const entry = id ? this.byId.get(id) : undefined;
      const newest = id ? (this.latest.get(id) ?? 0) : 0;
      if (entry && Date.now() - entry.at < TTL_MS && entry.tenant.version >= newest) return entry.tenant;
      if (id && newest > (entry?.tenant.version ?? 0)) {
        // A change was heard that the read model may not have applied yet (a suspension, new
        // IP ranges): ask the tenant's log, so it applies here at once.
        const tenant = await this.rpc.request<Tenant>('qry.tenant.current', { idOrSlug: id });
        this.remember(tenant);
        return tenant;
      }
    }
    let tenant = await this.rpc.request<Tenant>('qry.tenant.get', { idOrSlug, ...(consistentWith !== undefined ? { consistentWith } : {}) });
    if (tenant.version < (this.latest.get(tenant.id) ?? 0)) tenant = await this.rpc.request<Tenant>('qry.tenant.current', { idOrSlug: tenant.id });
    this.remember(tenant);
    return tenant;
  }

  /** Keeps a tenant as a command or query returned it, unless a newer version is known. */
  remember(tenant: Tenant): void {
    if (tenant.version < (this.latest.get(tenant.id) ?? 0)) return;
    this.latest.set(tenant.id, tenant.version);
    this.byId.delete(tenant.id);
    this.byId.set(tenant.id, { tenant, at: Date.now() });
    this.idBySlug.set(tenant.slug, tenant.id);
    if (this.byId.size > MAX_ENTRIES) {
      const oldest = this.byId.keys().next().value!;
      this.byId.delete(oldest);
    }
  }
}
