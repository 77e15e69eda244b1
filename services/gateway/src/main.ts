import { bootstrapService } from '@keel/service-kit';

bootstrapService({
  name: 'gateway',
  http: () => import('./http-app').then((m) => m.createGatewayApp),
  requires: { KEEL_BOOTSTRAP_TOKEN: 'set it (16+ characters) or start Keel with `npm start`, which makes one.' },
});
