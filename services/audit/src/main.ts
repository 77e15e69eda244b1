import { bootstrapService } from '@keel/service-kit';

bootstrapService({
  name: 'audit',
  module: () => import('./app.module').then((m) => m.auditModule),
  migrations: () => import('./database/migrations').then((m) => m.AUDIT_MIGRATIONS),
  requires: { KEEL_KEK: 'set it to 32 random bytes in base64 (openssl rand -base64 32), or start Keel with `npm start`, which makes one.' },
});
