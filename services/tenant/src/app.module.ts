import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS } from '@keel/database';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { CROSS_TENANT_DS } from './database/schema';
import { TenantCache } from './tenant/tenant-cache';
import { TenantCommands } from './tenant/tenant.commands';
import { TenantQueries } from './tenant/tenant.queries';
import { TenantsProjection } from './tenant/tenants.projection';

export function tenantModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'tenant',
    config,
    logger,
    dataSources: [{ provide: CROSS_TENANT_DS, label: 'cross-tenant', poolSize: 4, scope: ALL_TENANTS }],
    // The cache is optional: with Redis away, Postgres answers instead.
    redis: true,
    providers: [{ provide: TenantCache, useFactory: (r: Redis) => new TenantCache(r, config.KEEL_REDIS_PREFIX), inject: [Redis] }],
    projections: [{ projection: { useFactory: (cache: TenantCache) => new TenantsProjection(cache), inject: [TenantCache] } }],
    // Their @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    controllers: [TenantCommands, TenantQueries],
  });
}
