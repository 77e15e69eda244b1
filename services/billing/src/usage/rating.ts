import Decimal from 'decimal.js';
import { PLATFORM_PRICES, PriceRates, Quantities } from '@keel/contracts';

/** Exact decimal arithmetic (no binary floats anywhere a quantity or an amount is computed). */
export const D = Decimal.clone({ precision: 60, rounding: Decimal.ROUND_HALF_EVEN, toExpNeg: -40, toExpPos: 40 });
export type Dec = InstanceType<typeof D>;

/** A price version as the catalogue holds it. */
export interface PriceRow {
  scope: string;
  model: string;
  version: number;
  rates: PriceRates;
  effective_from: Date | string;
  effective_to: Date | string | null;
}

const time = (t: Date | string) => (t instanceof Date ? t.getTime() : Date.parse(t));

/**
 * The price that rates usage of `model` by `tenantId` at `at` (ms): the tenant's own (a negotiated
 * rate) when one of its versions covers that time, else the platform's; among the versions covering
 * it, the latest published (a fix supersedes what it corrects). Undefined when none covers it.
 */
export function choosePrice(prices: readonly PriceRow[], tenantId: string, model: string, at: number): PriceRow | undefined {
  const covering = (scope: string) =>
    prices
      .filter((p) => p.scope === scope && p.model === model && time(p.effective_from) <= at && (p.effective_to === null || at < time(p.effective_to)))
      .sort((a, b) => b.version - a.version)[0];
  return covering(tenantId) ?? covering(PLATFORM_PRICES);
}

export interface Rated {
  /** Exact cost in the price's currency; undefined when the price lacks a rate for a quantity used. */
  cost?: Dec;
  /** Why it could not be rated (a quantity without a rate). */
  missing?: string;
}

/** Decimals a record's cost keeps. */
export const COST_DECIMALS = 12;
const MILLION = new D(1_000_000);
const HOUR = new D(3_600);

/**
 * The cost of `quantities` at `rates`: tokens per million (cached input at the input rate when the
 * price has no cached rate), requests each, GPU-seconds per GPU-hour of `gpuType`. A quantity that
 * is not zero and has no rate makes the whole record unrated, never rated at 0.
 */
export function rate(quantities: Quantities, gpuType: string | undefined | null, rates: PriceRates): Rated {
  let cost = new D(0);
  const part = (q: string | undefined, r: string | undefined, per: Dec, name: string): string | undefined => {
    if (q === undefined || new D(q).isZero()) return undefined;
    if (r === undefined) return name;
    cost = cost.plus(new D(q).times(r).div(per));
    return undefined;
  };
  const missing =
    part(quantities.inputTokens, rates.inputPerMTok, MILLION, 'inputPerMTok') ??
    part(quantities.cachedInputTokens, rates.cachedInputPerMTok ?? rates.inputPerMTok, MILLION, 'cachedInputPerMTok') ??
    part(quantities.outputTokens, rates.outputPerMTok, MILLION, 'outputPerMTok') ??
    part(quantities.requests, rates.perRequest, new D(1), 'perRequest') ??
    part(quantities.gpuSeconds, gpuType ? rates.gpuHour?.[gpuType] : undefined, HOUR, `gpuHour.${gpuType ?? '?'}`);
  // Each record's cost to 12 decimals (a GPU-second is 1/3600 of an hour: no repeating decimals in the sums).
  return missing ? { missing } : { cost: cost.toDecimalPlaces(COST_DECIMALS) };
}

/** Why a record cannot be rated, for a person: undefined when it can. */
export function unratedReason(prices: readonly PriceRow[], tenantId: string, model: string, at: number, quantities: Quantities, gpuType?: string): string | undefined {
  const price = choosePrice(prices, tenantId, model, at);
  const when = new Date(at).toISOString();
  if (!price) return `no price for model "${model}" covers ${when}: publish one (POST /api/v1/billing/prices) before reporting its usage`;
  const rated = rate(quantities, gpuType, price.rates);
  if (rated.missing) return `the price of "${model}" in force at ${when} (${price.scope} version ${price.version}) has no ${rated.missing} rate for a quantity this record uses`;
  return undefined;
}
