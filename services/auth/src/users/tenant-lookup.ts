import { KeelError, Tenant } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';

const TTL_MS = 2_000;

/** Tenants as the tenant service answers them, cached briefly (status and settings change rarely). */
export class TenantLookup {
  private readonly cache = new Map<string, { tenant: Tenant | null; at: number }>();

  constructor(private readonly rpc: RpcClient) {}

  async find(idOrSlug: string): Promise<Tenant | null> {
    const hit = this.cache.get(idOrSlug);
    if (hit && Date.now() - hit.at < TTL_MS) return hit.tenant;
    let tenant: Tenant | null;
    try {
      tenant = await this.rpc.request<Tenant>('qry.tenant.get', { idOrSlug });
    } catch (error) {
      if (!(error instanceof KeelError) || error.code !== 'not_found') throw error;
      tenant = null;
    }
    this.cache.set(idOrSlug, { tenant, at: Date.now() });
    if (this.cache.size > 10_000) this.cache.delete(this.cache.keys().next().value!);
    return tenant;
  }

  async active(tenantId: string): Promise<Tenant> {
    const tenant = await this.find(tenantId);
    if (!tenant) throw new KeelError('not_found', `No tenant ${tenantId}.`);
    if (tenant.status !== 'active') throw new KeelError('invalid_transition', `Tenant ${tenant.slug} is ${tenant.status}.`);
    return tenant;
  }
}
