import { ModuleRef } from '@nestjs/core';
import Redis from 'ioredis';
import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { EventStore } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ProjectionRunner } from '@keel/projections';
import { serviceModule } from '@keel/service-kit';
import { BudgetLedger } from './budgets/budget-ledger';
import { CatalogueCache } from './catalogue-cache';
import { BudgetHandlers } from './budgets/budget.handlers';
import { ForecastHandlers } from './budgets/forecast';
import { TEAMS_RUNNER, TeamsProjection } from './budgets/teams.projection';
import { PLANS_RUNNER, PlansProjection } from './budgets/plans.projection';
import { InvoiceHandlers } from './invoices/invoice.handlers';
import { INVOICES_RUNNER, InvoicesProjection } from './invoices/invoices.projection';
import { SEATS_RUNNER, SeatsProjection } from './invoices/seats.projection';
import { PriceHandlers } from './prices/prices.handlers';
import { UsageHandlers } from './usage/usage.handlers';
import { UsageProjection } from './usage/usage.projection';
import { WebhookDispatcher } from './webhooks/webhook-dispatcher';
import { WebhookHandlers } from './webhooks/webhook.handlers';
import { WEBHOOKS_RUNNER, WebhooksProjection } from './webhooks/webhooks.projection';

/** Until the runner's lag is 0, or `ms` passed (then the seed is what Postgres has: best effort). */
async function caughtUp(runner: ProjectionRunner, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && (await runner.lag().catch(() => 0)) > 0) await new Promise((r) => setTimeout(r, 20));
}

export function billingModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'billing',
    config,
    logger,
    // Budget counters and reservations (the hot path); Postgres stays the source of truth.
    redis: true,
    providers: [
      // The hot path's copies of budgets and prices, valid while their scopes' generations hold.
      { provide: CatalogueCache, useFactory: (ds: DataSource) => new CatalogueCache(ds), inject: [DataSource] },
      {
        provide: BudgetLedger,
        // A counter is seeded once the usage projection has no events left to apply (at most 2 s).
        // (The runner is looked up when needed: it is made from the projection, which is given this ledger.)
        useFactory: (r: Redis, ds: DataSource, refs: ModuleRef, cache: CatalogueCache) =>
          new BudgetLedger(r, ds, config.KEEL_REDIS_PREFIX, () => caughtUp(refs.get(ProjectionRunner, { strict: false }), 2_000), cache),
        inject: [Redis, DataSource, ModuleRef, CatalogueCache],
      },
      // Also a provider: settling a reservation records its usage through the same checks.
      UsageHandlers,
      // Also a provider: the dispatcher disables a subscription that keeps failing through it.
      WebhookHandlers,
      WebhookDispatcher,
    ],
    projections: [
      {
        projection: {
          useFactory: (ledger: BudgetLedger, store: EventStore, cache: CatalogueCache) => new UsageProjection(ledger, store, cache),
          inject: [BudgetLedger, EventStore, CatalogueCache],
        },
      },
      { projection: { useFactory: (cache: CatalogueCache) => new PlansProjection(cache), inject: [CatalogueCache] }, provide: PLANS_RUNNER },
      { projection: { useFactory: () => new WebhooksProjection() }, provide: WEBHOOKS_RUNNER },
      { projection: { useFactory: () => new SeatsProjection() }, provide: SEATS_RUNNER },
      { projection: { useFactory: () => new InvoicesProjection() }, provide: INVOICES_RUNNER },
      { projection: { useFactory: (cache: CatalogueCache) => new TeamsProjection(cache), inject: [CatalogueCache] }, provide: TEAMS_RUNNER },
    ],
    controllers: [UsageHandlers, PriceHandlers, BudgetHandlers, ForecastHandlers, WebhookHandlers, InvoiceHandlers],
  });
}
