import { Inject, Injectable } from '@nestjs/common';
import { DataSource, EntityManager } from 'typeorm';
import { systemRoles } from '@keel/contracts';
import { inTenant } from '@keel/database';
import { AUTH_SCHEMA } from '../database/schema';

/** Custom roles change rarely; tokens and grants may see a change this much later on other replicas. */
const CACHE_MS = 5_000;

/** System roles (fixed) and each tenant's custom roles, resolved to permissions. */
@Injectable()
export class RoleCatalog {
  private readonly cache = new Map<string, { roles: Map<string, string[]>; at: number }>();

  constructor(@Inject(DataSource) private readonly ds: DataSource) {}

  /** name → permissions for every role a tenant can use. Inside a transaction (`m`) it reads afresh. */
  async roles(tenantId: string, m?: EntityManager): Promise<Map<string, string[]>> {
    const hit = this.cache.get(tenantId);
    if (!m && hit && Date.now() - hit.at < CACHE_MS) return hit.roles;
    const out = new Map<string, string[]>(Object.entries(systemRoles).map(([k, v]) => [k, [...v]]));
    const read = (db: EntityManager) => db.query(`SELECT name, permissions FROM "${AUTH_SCHEMA}".roles WHERE tenant_id = $1`, [tenantId]);
    const rows: { name: string; permissions: string[] }[] = m ? await read(m) : await inTenant(this.ds, tenantId, read);
    for (const r of rows) out.set(r.name, r.permissions);
    if (!m) {
      this.cache.set(tenantId, { roles: out, at: Date.now() });
      if (this.cache.size > 10_000) this.cache.delete(this.cache.keys().next().value!);
    }
    return out;
  }

  /** Forgets a tenant's roles after this replica changed them. */
  invalidate(tenantId: string): void {
    this.cache.delete(tenantId);
  }
}
