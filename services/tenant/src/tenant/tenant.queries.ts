import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { KeelConfig } from '@keel/config';
import {
  KeelError,
  Page,
  parseOrThrow,
  Tenant,
  tenantIdSchema,
  tenantRpc,
} from '@keel/contracts';
import { InjectConfig, MessagePattern } from '@keel/messaging';
import { ProjectionRunner } from '@keel/projections';
import { TENANT_SCHEMA } from '../database/schema';
import { TenantCache } from './tenant-cache';
import { rowToTenant, TenantRow } from './tenants.projection';

const TABLE = `"${TENANT_SCHEMA}".tenants`;

@Injectable()
export class TenantQueries {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly cache: TenantCache,
    private readonly runner: ProjectionRunner,
    @InjectConfig() private readonly config: KeelConfig,
  ) {}

  @MessagePattern('qry.tenant.get')
  async get(body: unknown): Promise<Tenant> {
    const q = parseOrThrow(tenantRpc.get.request, body, 'tenant lookup');
    const isId = tenantIdSchema.safeParse(q.idOrSlug).success;
    if (q.consistentWith !== undefined) {
      await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    } else {
      const cached = await this.cache.get(q.idOrSlug, isId).catch(() => null);
      if (cached) return cached;
    }
    const rows: TenantRow[] = await inTenant(this.ds, isId ? q.idOrSlug : ALL_TENANTS, (m) =>
      m.query(`SELECT * FROM ${TABLE} WHERE ${isId ? 'id' : 'slug'} = $1`, [q.idOrSlug]),
    );
    if (!rows.length) throw new KeelError('not_found', `No tenant with ${isId ? 'id' : 'slug'} "${q.idOrSlug}".`);
    const tenant = rowToTenant(rows[0]!);
    await this.cache.fill(tenant).catch(() => undefined);
    return tenant;
  }

  @MessagePattern('qry.tenant.list')
  async list(body: unknown): Promise<Page<Tenant>> {
    const q = parseOrThrow(tenantRpc.list.request, body, 'tenant listing');
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.cursor) {
      if (!tenantIdSchema.safeParse(q.cursor).success) {
        throw new KeelError('validation_failed', 'The cursor is not one this API returned.', [{ field: 'cursor', message: 'invalid cursor' }]);
      }
      params.push(q.cursor);
      where.push(`id > $${params.length}`);
    }
    if (q.status) {
      params.push(q.status);
      where.push(`status = $${params.length}`);
    }
    params.push(q.limit + 1);
    // Ids are UUIDv7, so id order is creation order.
    const rows: TenantRow[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT * FROM ${TABLE} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id LIMIT $${params.length}`, params),
    );
    const items = rows.slice(0, q.limit).map(rowToTenant);
    return { items, nextCursor: rows.length > q.limit ? items[items.length - 1]!.id : null };
  }

  @MessagePattern('cmd.tenant.rebuild_read_model')
  async rebuild(): Promise<{ position: number }> {
    return { position: (await this.runner.rebuild()).position };
  }
}
