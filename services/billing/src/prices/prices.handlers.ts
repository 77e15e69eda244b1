import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import {
  BILLING_CONTEXT,
  billingEventTypes as B,
  billingRpc,
  KeelError,
  parseOrThrow,
  PLATFORM_PRICES,
  Price,
  PRICE_AGGREGATE,
  PublishPrice,
} from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { CommandHandler, Decider, deterministicUuid } from '@keel/event-sourcing';
import { EventStore, InjectConfig, MessagePattern } from '@keel/messaging';
import { ProjectionRunner } from '@keel/projections';

/** A model's price in one scope: its versions, each a `billing.price.published` event. */
interface PriceState {
  versions: number;
}
type PriceEvent = { type: typeof B.pricePublished; data: Record<string, unknown> };
type PublishCommand = { type: 'publish'; scope: string; data: PublishPrice };

export const priceDecider: Decider<PriceState, PublishCommand, PriceEvent> = {
  initialState: () => ({ versions: 0 }),
  evolve: (s) => ({ versions: s.versions + 1 }),
  // Every publish is a new version; the catalogue keeps them all (a rated record names the one it used).
  decide: (c) => [
    {
      type: B.pricePublished,
      data: {
        scope: c.scope,
        model: c.data.model,
        aliases: c.data.aliases,
        currency: c.data.currency,
        rates: c.data.rates,
        effectiveFrom: new Date(c.data.effectiveFrom).toISOString(),
        effectiveTo: c.data.effectiveTo === undefined ? null : new Date(c.data.effectiveTo).toISOString(),
      },
    },
  ],
};

interface PriceDbRow {
  scope: string;
  model: string;
  version: number;
  aliases: string[];
  currency: string;
  rates: Price['rates'];
  effective_from: Date;
  effective_to: Date | null;
  published_at: Date;
  position: string;
}

const toPrice = (r: PriceDbRow): Price => ({
  scope: r.scope,
  model: r.model,
  version: r.version,
  aliases: r.aliases,
  currency: r.currency,
  rates: r.rates,
  effectiveFrom: r.effective_from.toISOString(),
  effectiveTo: r.effective_to ? r.effective_to.toISOString() : null,
  publishedAt: r.published_at.toISOString(),
  position: Number(r.position),
});

/** The price catalogue: publishing a version (event-sourced per scope and model) and listing them. */
@Injectable()
export class PriceHandlers {
  private readonly handler: CommandHandler<PriceState, PublishCommand, PriceEvent>;

  constructor(
    store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly runner: ProjectionRunner,
    @InjectConfig() private readonly config: KeelConfig,
  ) {
    this.handler = new CommandHandler(store, { context: BILLING_CONTEXT, aggregateType: PRICE_AGGREGATE, decider: priceDecider });
  }

  @MessagePattern('cmd.billing.publish_price')
  async publish(body: unknown): Promise<Price> {
    const { meta, payload } = parseOrThrow(billingRpc.publishPrice.request, body, 'price');
    // A tenant's id in any case names the same scope.
    const scope = payload.scope.toLowerCase();
    const { data } = payload;
    await this.refuseAliasClash(scope, data);
    const tenantId = scope === PLATFORM_PRICES ? 'platform' : scope;
    const result = await this.handler.handle({ tenantId, aggregateId: deterministicUuid('keel.price', scope, data.model) }, { type: 'publish', scope, data }, meta);
    const event = result.events[result.events.length - 1];
    const d = (event?.data ?? priceDecider.decide({ type: 'publish', scope, data }, result.state)[0]!.data) as Record<string, unknown>;
    return {
      scope,
      model: data.model,
      version: result.version,
      aliases: data.aliases,
      currency: data.currency,
      rates: data.rates,
      effectiveFrom: d.effectiveFrom as string,
      effectiveTo: d.effectiveTo as string | null,
      publishedAt: event?.occurredAt ?? new Date().toISOString(),
      position: result.position,
    };
  }

  /** An alias names one model in a scope, and never a model that has prices of its own. */
  private async refuseAliasClash(scope: string, data: PublishPrice): Promise<void> {
    const names = [data.model, ...data.aliases];
    const rows: { alias: string; model: string }[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(
        `SELECT alias, model FROM model_aliases WHERE scope = $1 AND alias = ANY($2)
         UNION ALL SELECT DISTINCT model AS alias, model FROM prices WHERE scope = $1 AND model = ANY($3)`,
        [scope, names, data.aliases],
      ),
    );
    for (const r of rows) {
      if (r.alias === data.model && r.model !== data.model) {
        throw new KeelError('conflict', `"${data.model}" is an alias of "${r.model}" here: publish the price of "${r.model}", or choose another name.`);
      }
      if (data.aliases.includes(r.alias) && r.model !== data.model) {
        throw new KeelError('conflict', `"${r.alias}" already names ${r.alias === r.model ? 'a model with prices of its own' : `"${r.model}"`} here.`, [
          { field: 'aliases', message: `"${r.alias}" is taken` },
        ]);
      }
    }
  }

  @MessagePattern('qry.billing.prices')
  async list(body: unknown): Promise<{ items: Price[] }> {
    const q = parseOrThrow(billingRpc.prices.request, body, 'price list');
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const scopes = q.scope === PLATFORM_PRICES ? [PLATFORM_PRICES] : [q.scope.toLowerCase(), PLATFORM_PRICES];
    const rows: PriceDbRow[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT * FROM prices WHERE scope = ANY($1) ORDER BY scope = 'platform', model, version`, [scopes]),
    );
    return { items: rows.map(toPrice) };
  }
}
