import { APP_FILTER, APP_GUARD, DiscoveryModule } from '@nestjs/core';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { RpcClient, TypedRpc } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { AdminController } from './admin/admin.controller';
import { routes } from '@keel/contracts';
import { forwardedRouteControllers } from './http/forwarded-routes';
import { ApiDocsController, ApiDocuments } from './http/openapi';
import { ProblemFilter } from './http/problem';
import { IdempotencyInterceptor } from './http/idempotency.interceptor';
import { DenialRecorder } from './http/denials';
import { RequestGuard } from './http/request.guard';
import { Admission } from './http/admission';
import { OpsController } from './ops/ops.controller';
import { TenantDirectory } from './tenants/tenant-directory';
import { AuthController } from './identity/auth.controller';
import { IdentityVerifier } from './identity/identity';
import { RbacController } from './identity/rbac.controller';
import { SsoController } from './identity/sso.controller';
import { TenantIdentityController } from './identity/tenant-identity.controller';
import { RateLimiter } from './http/rate-limiter';
import { TenantsController } from './tenants/tenants.controller';

export function gatewayModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'gateway',
    config,
    logger,
    redis: true,
    imports: [DiscoveryModule],
    controllers: [
      TenantsController, AdminController, AuthController, TenantIdentityController, RbacController, SsoController, OpsController, ApiDocsController,
      // Every route declared with `forward` (a new service's, typically), served without a controller of its own.
      ...forwardedRouteControllers(routes),
    ],
    providers: [
      ApiDocuments,
      { provide: TypedRpc, useFactory: (rpc: RpcClient) => new TypedRpc(rpc), inject: [RpcClient] },
      Admission,
      { provide: APP_GUARD, useClass: RequestGuard },
      IdempotencyInterceptor,
      DenialRecorder,
      TenantDirectory,
      IdentityVerifier,
      { provide: RateLimiter, useFactory: (r: Redis) => new RateLimiter(r, config.KEEL_REDIS_PREFIX), inject: [Redis] },
      { provide: APP_FILTER, useClass: ProblemFilter },
    ],
  });
}
