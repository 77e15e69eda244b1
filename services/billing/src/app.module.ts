import { KeelConfig } from '@keel/config';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { PriceHandlers } from './prices/prices.handlers';
import { UsageHandlers } from './usage/usage.handlers';
import { UsageProjection } from './usage/usage.projection';

export function billingModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'billing',
    config,
    logger,
    projections: [{ projection: { useFactory: () => new UsageProjection() } }],
    controllers: [UsageHandlers, PriceHandlers],
  });
}
