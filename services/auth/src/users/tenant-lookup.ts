import { KeelError, Tenant } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';

const TTL_MS = 2_000;

/**
 * Tenants as their log has them (`qry.tenant.current`, not the read model: a tenant created a
 * moment ago is found at once). Found tenants are kept for two seconds, so a suspension or a
 * plan change reaches sign-ins within that; a miss is never kept.
 */
export class TenantLookup {
  private readonly cache = new Map<string, { tenant: Tenant; at: number }>();

  constructor(private readonly rpc: RpcClient) {}

  async find(idOrSlug: string): Promise<Tenant | null> {
    const hit = this.cache.get(idOrSlug);
    if (hit && Date.now() - hit.at < TTL_MS) return hit.tenant;
    let tenant: Tenant;
    try {
      tenant = await this.rpc.request<Tenant>('qry.tenant.current', { idOrSlug });
    } catch (error) {
      if (error instanceof KeelError && error.code === 'not_found') return null;
      throw error;
    }
    this.cache.delete(idOrSlug);
    this.cache.set(idOrSlug, { tenant, at: Date.now() });
    if (this.cache.size > 10_000) this.cache.delete(this.cache.keys().next().value!);
    return tenant;
  }

  /**
   * Always the log's answer, found or not (for sign-in: a known tenant costs the same lookup as
   * an unknown one, so the time of a refusal does not tell them apart).
   */
  async current(idOrSlug: string): Promise<Tenant | null> {
    this.cache.delete(idOrSlug);
    return this.find(idOrSlug);
  }

  /** For commands: always the log's answer, never a cached one. */
  async active(tenantId: string): Promise<Tenant> {
    this.cache.delete(tenantId);
    const tenant = await this.find(tenantId);
    if (!tenant) throw new KeelError('not_found', `No tenant ${tenantId}.`);
    if (tenant.status !== 'active') throw new KeelError('invalid_transition', `Tenant ${tenant.slug} is ${tenant.status}.`);
    return tenant;
  }
}
