import { Inject, Injectable, Module, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { KeelConfig, serviceDatabaseUrl } from '@keel/config';
import { ALL_TENANTS, openDataSource } from '@keel/database';
import { KEEL_LOGGER, MESSAGING, Messaging, MessagingModule, RpcClient } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ProjectionRunner } from '@keel/projections';
import { CROSS_TENANT_DS, TENANT_ROLE, TENANT_SCHEMA } from './database/schema';
import { TenantCache } from './tenant/tenant-cache';
import { TenantCommands } from './tenant/tenant.commands';
import { TenantQueries } from './tenant/tenant.queries';
import { TenantsProjection } from './tenant/tenants.projection';

@Injectable()
class TenantLifecycle implements OnApplicationBootstrap, OnApplicationShutdown {
  constructor(
    private readonly runner: ProjectionRunner,
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(CROSS_TENANT_DS) private readonly crossTenant: DataSource,
    private readonly redis: Redis,
  ) {}
  async onApplicationBootstrap(): Promise<void> {
    await this.runner.start();
  }
  async onApplicationShutdown(): Promise<void> {
    await this.runner.stop();
    await this.ds.destroy();
    await this.crossTenant.destroy();
    this.redis.disconnect();
  }
}

export function tenantModule(config: KeelConfig, logger: Logger) {
  @Module({
    imports: [MessagingModule.forRoot({ config, logger, service: 'tenant' })],
    providers: [
      {
        provide: DataSource,
        useFactory: () =>
          openDataSource({ url: serviceDatabaseUrl(config, TENANT_ROLE), schema: TENANT_SCHEMA, applicationName: 'keel-tenant' }),
      },
      {
        provide: CROSS_TENANT_DS,
        useFactory: () =>
          openDataSource({ url: serviceDatabaseUrl(config, TENANT_ROLE), schema: TENANT_SCHEMA, applicationName: 'keel-tenant-cross-tenant', poolSize: 4, scope: ALL_TENANTS }),
      },
      {
        provide: Redis,
        // Fail fast when Redis is away: the cache is optional, Postgres answers instead.
        useFactory: () => new Redis(config.REDIS_URL, { maxRetriesPerRequest: 1, enableOfflineQueue: false, enableAutoPipelining: true }),
      },
      { provide: TenantCache, useFactory: (r: Redis) => new TenantCache(r, config.KEEL_REDIS_PREFIX), inject: [Redis] },
      {
        provide: ProjectionRunner,
        useFactory: (ds: DataSource, m: Messaging, rpc: RpcClient, log: Logger, cache: TenantCache) =>
          new ProjectionRunner({ ds, messaging: m, rpc, logger: log, schema: TENANT_SCHEMA, projection: new TenantsProjection(cache) }),
        inject: [DataSource, MESSAGING, RpcClient, KEEL_LOGGER, TenantCache],
      },
      TenantLifecycle,
    ],
    // Their @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    controllers: [TenantCommands, TenantQueries],
  })
  class TenantModule {}
  return TenantModule;
}
