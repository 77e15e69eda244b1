import { bootstrapService } from '@keel/service-kit';

bootstrapService({
  name: 'billing',
  module: () => import('./app.module').then((m) => m.billingModule),
  migrations: () => import('./database/migrations').then((m) => m.BILLING_MIGRATIONS),
});
