import Redis from 'ioredis';
import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { BudgetLedger } from './budgets/budget-ledger';
import { BudgetHandlers } from './budgets/budget.handlers';
import { PriceHandlers } from './prices/prices.handlers';
import { UsageHandlers } from './usage/usage.handlers';
import { UsageProjection } from './usage/usage.projection';

export function billingModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'billing',
    config,
    logger,
    // Budget counters and reservations (the hot path); Postgres stays the source of truth.
    redis: true,
    providers: [
      { provide: BudgetLedger, useFactory: (r: Redis, ds: DataSource) => new BudgetLedger(r, ds, config.KEEL_REDIS_PREFIX), inject: [Redis, DataSource] },
      // Also a provider: settling a reservation records its usage through the same checks.
      UsageHandlers,
    ],
    projections: [{ projection: { useFactory: (ledger: BudgetLedger) => new UsageProjection(ledger), inject: [BudgetLedger] } }],
    controllers: [UsageHandlers, PriceHandlers, BudgetHandlers],
  });
}
