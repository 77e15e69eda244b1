import { bootstrapService } from '@keel/service-kit';

bootstrapService({
  name: 'tenant',
  module: () => import('./app.module').then((m) => m.tenantModule),
  migrations: () => import('./database/migrations').then((m) => m.TENANT_MIGRATIONS),
});
