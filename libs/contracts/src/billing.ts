import { z } from 'zod';
import { command, commandRequest, consistentWithParam, isoTime, listOf, positionSchema, query, route, routeGroup, serviceContract } from './contract';
import { permissions as P } from './permissions';
import { canonicalDecimal, decimalSchema } from './decimal';
import { csvField, textCell } from './csv';
import { recordKeyError, text } from './text';
import { invoiceEventSchemas, invoiceRoutes, invoiceRpc } from './invoices';
import { webhookEventSchemas, webhookRoutes, webhookRpc } from './webhooks';

/**
 * The billing service: usage records (facts on the log, counted once each in Postgres), the price
 * catalogue that rates them, and reports over the rollups. See the README's "Billing" section.
 */
export { canonicalDecimal, decimalSchema } from './decimal';
export const BILLING_CONTEXT = 'billing';
export const USAGE_AGGREGATE = 'usage';
export const PRICE_AGGREGATE = 'price';
export const RATING_AGGREGATE = 'rating';
/** The scope of the platform's own price list (a tenant's overrides are scoped by its id). */
export const PLATFORM_PRICES = 'platform';

/** How far back and ahead a usage record's `occurredAt` may be (Stripe's limits). */
export const USAGE_MAX_AGE_DAYS = 35;
export const USAGE_MAX_AHEAD_MINUTES = 5;
export const USAGE_BATCH_MAX = 1_000;

const FIRST = Date.UTC(2000, 0, 1);
const END = Date.UTC(10_000, 0, 1);
/** An ISO-8601 time with an offset, between the years 2000 and 9999 in UTC (what Postgres and a bill can hold). */
const instant = () =>
  z.iso.datetime({ offset: true }).refine((v) => {
    const t = Date.parse(v);
    return Number.isNaN(t) || (t >= FIRST && t < END);
  }, 'must be between 2000-01-01 and 9999-12-31 (UTC)');
/** A model id as usage and prices name it: compared lower-cased (aliases resolve to it). */
export const modelSchema = text().trim().min(1, 'must not be empty').max(200).transform((m) => m.toLowerCase());
const dimension = text().trim().min(1, 'must not be empty (leave it out instead)').max(200);

export const attributionSchema = z
  .object({ userId: dimension, teamId: dimension, projectId: dimension, costCenter: dimension, environment: dimension, apiKeyId: dimension })
  .partial()
  .strict();
export type Attribution = z.infer<typeof attributionSchema>;

export const quantitiesSchema = z
  .object({ inputTokens: decimalSchema, cachedInputTokens: decimalSchema, outputTokens: decimalSchema, requests: decimalSchema, gpuSeconds: decimalSchema })
  .partial()
  .strict();
export type Quantities = z.infer<typeof quantitiesSchema>;
export const QUANTITY_NAMES = ['inputTokens', 'cachedInputTokens', 'outputTokens', 'requests', 'gpuSeconds'] as const;

export const usageKindSchema = z.enum(['record', 'amend', 'cancel']);

/**
 * One usage record as a producer sends it (`kind` defaults to `record`). `record` counts usage once per (tenant, source, id);
 * `amend` replaces what the record `target` counted (its model, attribution and quantities; it
 * keeps its time), `cancel` removes it. A correction has an id of its own, counted once like a record.
 */
const usageFields = {
  id: text().min(1).max(200),
  model: modelSchema,
  gpuType: text().trim().min(1).max(64).optional(),
  attribution: attributionSchema.default({}),
  quantities: quantitiesSchema,
};
const quantityRule = (r: { quantities: Quantities; gpuType?: string }, ctx: z.RefinementCtx) => {
  if (!Object.keys(r.quantities).length) ctx.addIssue({ code: 'custom', path: ['quantities'], message: 'name at least one quantity' });
  if (r.quantities.gpuSeconds !== undefined && r.gpuType === undefined) ctx.addIssue({ code: 'custom', path: ['gpuType'], message: 'GPU-seconds are priced by GPU type: name it' });
};
const correctionTarget = text().min(1).max(200).describe('The id of the record it corrects (same source)');

export const usageRecordInputSchema = z.discriminatedUnion('kind', [
  z
    .object({ kind: z.literal('record').default('record'), ...usageFields, occurredAt: instant() })
    .strict()
    .superRefine(quantityRule),
  z
    .object({ kind: z.literal('amend'), ...usageFields, target: correctionTarget, occurredAt: instant().optional() })
    .strict()
    .superRefine(quantityRule),
  z.object({ kind: z.literal('cancel'), id: usageFields.id, target: correctionTarget, occurredAt: instant().optional() }).strict(),
], { error: (issue) => (issue.code === 'invalid_union' ? 'kind must be "record" (the default), "amend" or "cancel"' : undefined) });
export type UsageRecordInput = z.infer<typeof usageRecordInputSchema>;

export const usageBatchSchema = z
  .object({
    /** Who produced the records (an AI gateway, a product): ids are unique per source. Not defaulted from the caller, so a retry with another credential counts nothing twice. */
    source: text().trim().min(1).max(100).regex(/^[A-Za-z0-9._:-]+$/, 'letters, digits and . _ : - only').default('default'),
    records: z.array(usageRecordInputSchema).min(1, 'send at least one record').max(USAGE_BATCH_MAX, `at most ${USAGE_BATCH_MAX} records per batch`),
  })
  .strict();

export const usageResultSchema = z.object({
  index: z.number().int(),
  id: text(),
  status: z.enum(['accepted', 'duplicate', 'refused']),
  /** Stream position of the accepted record's fact. */
  position: positionSchema.optional(),
  reason: text({ multiline: true }).optional(),
});
export const usageAnswerSchema = z
  .object({ accepted: z.number().int(), duplicates: z.number().int(), refused: z.number().int(), results: z.array(usageResultSchema) })
  .meta({ id: 'UsageIngestResult' });

// ---- prices ----

const rate = decimalSchema;
export const priceRatesSchema = z
  .object({
    /** Per million tokens. */
    inputPerMTok: rate,
    cachedInputPerMTok: rate,
    outputPerMTok: rate,
    perRequest: rate,
    /** Per GPU-hour, by GPU type (e.g. `H100`). */
    gpuHour: z.record(text().min(1).max(64), rate, recordKeyError),
  })
  .partial()
  .strict();
export type PriceRates = z.infer<typeof priceRatesSchema>;

/** Sanity bounds a price must keep (a slip of a unit is refused, not billed: LiteLLM #20615). */
export const PRICE_BOUNDS = { perMTok: 10_000, perRequest: 100, gpuHour: 1_000 } as const;

export const publishPriceSchema = z
  .object({
    model: modelSchema,
    aliases: z.array(modelSchema).max(50).default([]),
    currency: z.literal('USD').default('USD'),
    rates: priceRatesSchema,
    effectiveFrom: instant(),
    effectiveTo: instant().optional(),
  })
  .strict()
  .superRefine((p, ctx) => {
    const r = p.rates;
    const rated = [r.inputPerMTok, r.cachedInputPerMTok, r.outputPerMTok, r.perRequest].filter((v) => v !== undefined).length + Object.keys(r.gpuHour ?? {}).length;
    if (!rated) ctx.addIssue({ code: 'custom', path: ['rates'], message: 'name at least one rate (a free model is priced at "0" explicitly)' });
    const over = (v: string | undefined, max: number, field: string) => {
      if (v !== undefined && Number(v) > max) ctx.addIssue({ code: 'custom', path: ['rates', field], message: `${v} is above the sanity bound ${max} USD: check the unit` });
    };
    over(r.inputPerMTok, PRICE_BOUNDS.perMTok, 'inputPerMTok');
    over(r.cachedInputPerMTok, PRICE_BOUNDS.perMTok, 'cachedInputPerMTok');
    over(r.outputPerMTok, PRICE_BOUNDS.perMTok, 'outputPerMTok');
    over(r.perRequest, PRICE_BOUNDS.perRequest, 'perRequest');
    for (const [gpu, v] of Object.entries(r.gpuHour ?? {})) over(v, PRICE_BOUNDS.gpuHour, `gpuHour.${gpu}`);
    if (r.cachedInputPerMTok !== undefined && r.inputPerMTok !== undefined && Number(r.cachedInputPerMTok) > Number(r.inputPerMTok)) {
      ctx.addIssue({ code: 'custom', path: ['rates', 'cachedInputPerMTok'], message: 'a cached input token cannot cost more than an input token' });
    }
    if (p.effectiveTo !== undefined && Date.parse(p.effectiveTo) <= Date.parse(p.effectiveFrom)) {
      ctx.addIssue({ code: 'custom', path: ['effectiveTo'], message: 'must be after effectiveFrom' });
    }
    if (p.aliases.includes(p.model)) ctx.addIssue({ code: 'custom', path: ['aliases'], message: 'a model is not an alias of itself' });
    if (new Set(p.aliases).size !== p.aliases.length) ctx.addIssue({ code: 'custom', path: ['aliases'], message: 'names an alias twice (aliases compare lower-cased)' });
  });
export type PublishPrice = z.infer<typeof publishPriceSchema>;

export const priceSchema = z
  .object({
    scope: text(),
    model: text(),
    version: z.number().int(),
    aliases: z.array(text()),
    currency: text(),
    rates: priceRatesSchema,
    effectiveFrom: isoTime,
    effectiveTo: isoTime.nullable(),
    publishedAt: isoTime,
    position: positionSchema,
  })
  .meta({ id: 'Price' });
export type Price = z.infer<typeof priceSchema>;

// ---- reports ----

export const reportDimensions = ['model', 'user', 'team', 'project', 'costCenter', 'environment', 'apiKey'] as const;
export type ReportDimension = (typeof reportDimensions)[number];

const groupBySchema = text()
  .transform((s, ctx) => {
    const parts = s.split(',').map((p) => p.trim()).filter(Boolean);
    const bad = parts.filter((p) => !(reportDimensions as readonly string[]).includes(p));
    if (bad.length) {
      ctx.addIssue({ code: 'custom', message: `unknown dimension ${bad.map((b) => `"${b}"`).join(', ')}; choose from ${reportDimensions.join(', ')}` });
      return z.NEVER;
    }
    return [...new Set(parts)] as ReportDimension[];
  })
  .meta({ override: ({ jsonSchema }: { jsonSchema: Record<string, unknown> }) => void Object.assign(jsonSchema, { description: `Comma-separated: ${reportDimensions.join(', ')}` }) });

const PERIOD = /^[2-9]\d{3}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$/;
export const usageReportQuerySchema = z
  .object({
    /** A calendar month (`2026-11`) or day (`2026-11-30`) in `timeZone`; or `from` and `to`. */
    period: text().regex(PERIOD, 'must be a month (YYYY-MM) or a day (YYYY-MM-DD)').optional(),
    from: instant().optional(),
    to: instant().optional(),
    /** An IANA time zone (default UTC): where a period's days begin. */
    timeZone: text().min(1).max(64).optional(),
    groupBy: groupBySchema.optional(),
    format: z.enum(['json', 'csv']).default('json'),
    consistentWith: consistentWithParam,
  })
  .strict();

const measures = {
  inputTokens: text(),
  cachedInputTokens: text(),
  outputTokens: text(),
  requests: text(),
  gpuSeconds: text(),
  /** In `currency`, exact (12 decimals). */
  cost: text(),
  /** Records counted (cancelled ones are not). */
  records: z.number().int(),
  /** Records counted that no price covered (their cost is not in `cost`): publish the price, then re-rate. */
  unpricedRecords: z.number().int(),
};
export const usageReportRowSchema = z.object({ key: z.record(text(), text().nullable()), ...measures });
export const usageReportSchema = z
  .object({
    tenantId: z.uuid(),
    from: isoTime,
    to: isoTime,
    timeZone: text(),
    groupBy: z.array(z.enum(reportDimensions)),
    currency: text(),
    rows: z.array(usageReportRowSchema),
    total: z.object(measures),
  })
  .meta({ id: 'UsageReport' });
export type UsageReport = z.infer<typeof usageReportSchema>;

export const usageRecordViewSchema = z
  .object({
    tenantId: z.uuid(),
    source: text(),
    id: text(),
    status: z.enum(['active', 'cancelled']),
    occurredAt: isoTime,
    model: text(),
    gpuType: text().nullable(),
    attribution: attributionSchema,
    quantities: z.record(text(), text()),
    cost: text(),
    priced: z.boolean(),
    price: z.object({ scope: text(), model: text(), version: z.number().int() }).nullable(),
    /** How many corrections applied to it (amends and a cancel). */
    corrections: z.number().int(),
    position: positionSchema,
  })
  .meta({ id: 'UsageRecord' });


// ---- budgets ----

export const BUDGET_AGGREGATE = 'budget';
export const budgetScopeKinds = ['tenant', 'team', 'user', 'project', 'model', 'environment', 'apiKey'] as const;
export type BudgetScopeKind = (typeof budgetScopeKinds)[number];

export const budgetScopeSchema = z
  .object({ kind: z.enum(budgetScopeKinds), id: dimension.optional() })
  .strict()
  .superRefine((s, ctx) => {
    if (s.kind === 'tenant' && s.id !== undefined) ctx.addIssue({ code: 'custom', path: ['id'], message: 'a tenant budget covers the whole tenant: leave id out' });
    if (s.kind !== 'tenant' && s.id === undefined) ctx.addIssue({ code: 'custom', path: ['id'], message: `a ${s.kind} budget names the ${s.kind} (its id as usage records carry it)` });
  });
export type BudgetScope = z.infer<typeof budgetScopeSchema>;

export const budgetPeriodSchema = z
  .object({
    /** Calendar periods of the time zone: a day from local midnight, a week from Monday, a month, a quarter, a year. */
    unit: z.enum(['day', 'week', 'month', 'quarter', 'year']),
    timeZone: text().min(1).max(64).default('UTC'),
  })
  .strict();

export const thresholdSchema = z
  .object({
    /** Of the limit: 50, 80, 100, or beyond (a hard threshold at 110 allows 10 % over). */
    percent: z.number().min(1).max(1_000),
    /** warn: notify; soft: notify and allow; throttle: notify and lower the rate limit; hard: refuse what would pass it. */
    mode: z.enum(['warn', 'soft', 'throttle', 'hard']),
    /** throttle only: the share of the tenant's rate limit (its plan's requests a minute) left to the budget's calls once passed (default 0.5). */
    share: z.number().min(0.0001).max(1).optional(),
  })
  .strict()
  .refine((t) => t.share === undefined || t.mode === 'throttle', { path: ['share'], message: 'only a throttle threshold has a share' });

export const budgetBodySchema = z
  .object({
    name: text().trim().min(1, 'must not be empty').max(200),
    scope: budgetScopeSchema,
    /** USD (exact decimal) or tokens (input, cached input and output together). */
    unit: z.enum(['USD', 'tokens']),
    limit: decimalSchema,
    period: budgetPeriodSchema,
    thresholds: z.array(thresholdSchema).min(1).max(10).default([{ percent: 80, mode: 'warn' }, { percent: 100, mode: 'hard' }]),
    /** When Redis cannot be reached: refuse (closed, 503) or allow without counting (open). */
    failMode: z.enum(['closed', 'open']).default('closed'),
  })
  .strict()
  .superRefine((b, ctx) => {
    const hard = b.thresholds.filter((t) => t.mode === 'hard');
    if (hard.length > 1) ctx.addIssue({ code: 'custom', path: ['thresholds'], message: 'at most one hard threshold' });
    const percents = b.thresholds.map((t) => t.percent);
    if (new Set(percents).size !== percents.length) ctx.addIssue({ code: 'custom', path: ['thresholds'], message: 'each threshold at its own percent' });
    if (Number(b.limit) <= 0) ctx.addIssue({ code: 'custom', path: ['limit'], message: 'must be more than 0' });
    if (b.unit === 'tokens' && b.limit.includes('.')) ctx.addIssue({ code: 'custom', path: ['limit'], message: 'a token budget is a whole number of tokens' });
  });
export type BudgetBody = z.infer<typeof budgetBodySchema>;
export const budgetPatchSchema = z
  .object({ name: budgetBodySchema.shape.name, limit: decimalSchema, thresholds: z.array(thresholdSchema).min(1).max(10), failMode: z.enum(['closed', 'open']) })
  .partial()
  .strict()
  .refine((v) => Object.keys(v).length > 0, { message: 'name at least one field to change' });

export const budgetSchema = z
  .object({
    id: z.uuid(),
    tenantId: z.uuid(),
    name: text(),
    scope: z.object({ kind: z.enum(budgetScopeKinds), id: text().optional() }),
    unit: z.enum(['USD', 'tokens']),
    limit: text(),
    period: z.object({ unit: z.enum(['day', 'week', 'month', 'quarter', 'year']), timeZone: text() }),
    thresholds: z.array(z.object({ percent: z.number(), mode: z.enum(['warn', 'soft', 'throttle', 'hard']), share: z.number().optional() })),
    failMode: z.enum(['closed', 'open']),
    version: z.number().int(),
    createdAt: isoTime,
    updatedAt: isoTime,
    /** The current period and what it holds (spent by settled and reported usage, reserved by open reservations). */
    current: z
      .object({ periodStart: isoTime, periodEnd: isoTime, spent: text(), reserved: text(), remaining: text() })
      .optional(),
  })
  .meta({ id: 'Budget' });
export type Budget = z.infer<typeof budgetSchema>;
export const budgetAnswerSchema = z.object({ budget: budgetSchema, version: z.number().int(), position: positionSchema }).meta({ id: 'BudgetCommandResult' });

// ---- reservations (admission on the hot path) ----

export const reservationRequestSchema = z
  .object({
    /** The AI request's id: one reservation per id; it becomes the usage record's id when settled. */
    requestId: text().min(1).max(200),
    source: usageBatchSchema.shape.source,
    model: modelSchema,
    gpuType: text().trim().min(1).max(64).optional(),
    attribution: attributionSchema.default({}),
    /** What the call may use at most: input tokens and the output cap (max_tokens), GPU-seconds… */
    estimate: quantitiesSchema.refine((q) => Object.keys(q).length > 0, { message: 'name at least one quantity' }),
    /** Released by the sweeper if neither settled nor released by then. */
    ttlSeconds: z.number().int().min(5).max(86_400).default(600),
  })
  .strict();

export const settleSchema = z
  .object({
    /** What the call used (the usage record). A cancelled call without quantities is charged its estimated input. */
    quantities: quantitiesSchema.optional(),
    cancelled: z.boolean().default(false),
    occurredAt: instant().optional(),
  })
  .strict();

export const reservationSchema = z
  .object({
    requestId: text(),
    status: z.enum(['reserved', 'settled', 'released', 'expired', 'unchecked']),
    expiresAt: isoTime.optional(),
    /** What was held on each budget that applies (USD amounts, or tokens). */
    holds: z.array(z.object({ budgetId: z.uuid(), unit: z.enum(['USD', 'tokens']), amount: text() })),
    /** A settled reservation's usage record position. */
    position: positionSchema.optional(),
  })
  .meta({ id: 'Reservation' });

// ---- forecast ----

export const budgetForecastSchema = z.object({
  budgetId: z.uuid(),
  name: text(),
  unit: z.enum(['USD', 'tokens']),
  limit: text(),
  periodStart: isoTime,
  periodEnd: isoTime,
  spent: text(),
  /** Per day, over the trailing window. */
  runRatePerDay: text(),
  /** `spent` and the run-rate to the period's end. */
  projected: text(),
  /** When the run-rate reaches the limit in this period (null: not before it ends, or reached already). */
  projectedToReachAt: isoTime.nullable(),
  /** The limit is projected to be reached in this period (or is already). */
  exceeds: z.boolean(),
});
export const usageForecastSchema = z
  .object({
    tenantId: z.uuid(),
    asOf: isoTime,
    /** The calendar month of `timeZone` the forecast covers. */
    from: isoTime,
    to: isoTime,
    timeZone: text(),
    currency: text(),
    /** The trailing window the run-rate is measured over: the last 7 days, or since the month began. */
    windowHours: z.number(),
    spent: text(),
    runRatePerDay: text(),
    projected: text(),
    budgets: z.array(budgetForecastSchema),
  })
  .meta({ id: 'UsageForecast' });
export type UsageForecast = z.infer<typeof usageForecastSchema>;

// ---- events ----

export const billingEventTypes = {
  usageRecorded: 'billing.usage.recorded',
  pricePublished: 'billing.price.published',
  usageRerated: 'billing.rating.rerated',
  budgetCreated: 'billing.budget.created',
  budgetUpdated: 'billing.budget.updated',
  budgetDeleted: 'billing.budget.deleted',
  thresholdCrossed: 'billing.budget_alert.threshold_crossed',
  projectedToExceed: 'billing.budget_alert.projected_to_exceed',
} as const;
export const BUDGET_ALERT_AGGREGATE = 'budget_alert';

const attributionView = z.object({ userId: text(), teamId: text(), projectId: text(), costCenter: text(), environment: text(), apiKeyId: text() }).partial();
/** What every budget alert says: the budget, its period and what it has spent. */
const alertBody = z.object({ budgetId: z.uuid(), name: text(), unit: text(), limit: text(), periodStart: isoTime, periodEnd: isoTime, spent: text() });
export const billingEventSchemas = {
  [billingEventTypes.usageRecorded]: z.object({
    source: text(),
    recordId: text(),
    kind: usageKindSchema,
    target: text().optional(),
    occurredAt: isoTime.optional(),
    model: text().optional(),
    modelAsSent: text().optional(),
    gpuType: text().optional(),
    attribution: attributionView,
    quantities: z.record(text(), text()).optional(),
    /** Settled through a reservation (its cost went on the budget counters at the settle). */
    viaReservation: z.boolean().optional(),
  }),
  [billingEventTypes.pricePublished]: z.object({
    scope: text(),
    model: text(),
    aliases: z.array(text()),
    currency: text(),
    rates: z.object({ inputPerMTok: text(), cachedInputPerMTok: text(), outputPerMTok: text(), perRequest: text(), gpuHour: z.record(text(), text()) }).partial(),
    effectiveFrom: isoTime,
    effectiveTo: isoTime.nullable(),
  }),
  [billingEventTypes.usageRerated]: z.object({ from: isoTime, to: isoTime, reason: text({ multiline: true }) }),
  [billingEventTypes.budgetCreated]: z.object({ name: text(), scope: z.object({ kind: text(), id: text().optional() }), unit: text(), limit: text(), period: z.object({ unit: text(), timeZone: text() }), thresholds: z.array(z.object({ percent: z.number(), mode: text(), share: z.number().optional() })), failMode: text() }),
  [billingEventTypes.budgetUpdated]: z.object({ changes: z.record(text(), z.unknown()) }),
  [billingEventTypes.budgetDeleted]: z.object({}),
  /** Once per budget, period and threshold: the spend of the period passed `percent` of the limit. */
  [billingEventTypes.thresholdCrossed]: alertBody.extend({ percent: z.number(), mode: text() }),
  /** Once per budget and period: at the trailing run-rate, the period's spend reaches the limit before the period ends. */
  [billingEventTypes.projectedToExceed]: alertBody.extend({ projected: text(), projectedToReachAt: isoTime }),
} satisfies Record<(typeof billingEventTypes)[keyof typeof billingEventTypes], z.ZodType>;

// ---- commands and queries ----

const tenantScope = z.uuid();
const withTenant = <D extends z.ZodType>(data: D) => commandRequest(z.object({ tenantId: tenantScope, data }).strict());

export const rerateSchema = z
  .object({
    from: instant(),
    to: instant(),
    reason: text({ multiline: true }).trim().min(1, 'say why (a price fix, …)').max(1_000),
  })
  .strict()
  // (Only when both are times: a bad one is named on its own.)
  .refine((r) => !(Date.parse(r.to) <= Date.parse(r.from)), { path: ['to'], message: 'must be after from' });

export const billingRpc = {
  recordUsage: command(BILLING_CONTEXT, 'record_usage', {
    summary: 'Record a batch of usage records (facts on the log; each counted once)',
    request: withTenant(usageBatchSchema),
    response: usageAnswerSchema,
    timeoutMs: 30_000,
  }),
  publishPrice: command(BILLING_CONTEXT, 'publish_price', {
    summary: "Publish a model's price (a new version; the platform list, or a tenant's override)",
    request: commandRequest(z.object({ scope: z.union([z.literal(PLATFORM_PRICES), tenantScope]), data: publishPriceSchema }).strict()),
    response: priceSchema,
  }),
  rerate: command(BILLING_CONTEXT, 'rerate', {
    summary: "Re-rate a tenant's usage in a time range with the prices as they are now",
    request: withTenant(rerateSchema),
    response: z.object({ position: positionSchema }),
  }),
  prices: query(BILLING_CONTEXT, 'prices', {
    summary: 'Prices of a scope (the platform list, or a tenant: its overrides and the platform list)',
    request: z.object({ scope: z.union([z.literal(PLATFORM_PRICES), tenantScope]), consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(priceSchema),
  }),
  usageReport: query(BILLING_CONTEXT, 'usage_report', {
    summary: "A tenant's usage and cost over a period, grouped by attribution",
    request: z
      .object({ tenantId: tenantScope })
      .extend(usageReportQuerySchema.omit({ format: true, groupBy: true, consistentWith: true }).shape)
      .extend({ groupBy: z.array(z.enum(reportDimensions)).optional(), consistentWith: z.number().int().min(0).optional() })
      .strict(),
    response: usageReportSchema,
  }),
  createBudget: command(BILLING_CONTEXT, 'create_budget', { summary: 'Create a budget', request: withTenant(budgetBodySchema), response: budgetAnswerSchema }),
  updateBudget: command(BILLING_CONTEXT, 'update_budget', {
    summary: "Change a budget's name, limit, thresholds or fail mode",
    request: commandRequest(z.object({ tenantId: tenantScope, budgetId: z.uuid(), data: budgetPatchSchema }).strict()),
    response: budgetAnswerSchema,
  }),
  deleteBudget: command(BILLING_CONTEXT, 'delete_budget', {
    summary: 'Delete a budget',
    request: commandRequest(z.object({ tenantId: tenantScope, budgetId: z.uuid() }).strict()),
    response: z.object({ deleted: z.literal(true), position: positionSchema }),
  }),
  budgets: query(BILLING_CONTEXT, 'budgets', {
    summary: "A tenant's budgets with their current period",
    request: z.object({ tenantId: tenantScope, consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(budgetSchema),
  }),
  budget: query(BILLING_CONTEXT, 'budget', {
    summary: 'One budget with its current period',
    request: z.object({ tenantId: tenantScope, budgetId: z.uuid(), consistentWith: z.number().int().min(0).optional() }).strict(),
    response: budgetSchema,
  }),
  reserve: command(BILLING_CONTEXT, 'reserve', {
    summary: 'Reserve room on every budget that applies, all or none (refused naming the budget that has none)',
    request: withTenant(reservationRequestSchema),
    response: reservationSchema,
  }),
  settle: command(BILLING_CONTEXT, 'settle', {
    summary: 'Settle a reservation with what the call used (it becomes the usage record); once per request id',
    request: commandRequest(z.object({ tenantId: tenantScope, requestId: text().min(1).max(200), data: settleSchema }).strict()),
    response: reservationSchema,
  }),
  release: command(BILLING_CONTEXT, 'release', {
    summary: 'Release a reservation that used nothing; once per request id',
    request: commandRequest(z.object({ tenantId: tenantScope, requestId: text().min(1).max(200) }).strict()),
    response: reservationSchema,
  }),
  usageForecast: query(BILLING_CONTEXT, 'usage_forecast', {
    summary: "The month's spend so far, its trailing run-rate to the month's end (priced at the rated costs), and when each budget is projected to be reached",
    request: z.object({ tenantId: tenantScope, timeZone: text().min(1).max(64).optional() }).strict(),
    response: usageForecastSchema,
  }),
  usageRecord: query(BILLING_CONTEXT, 'usage_record', {
    summary: 'One usage record as counted and rated',
    request: z.object({ tenantId: tenantScope, recordId: text().min(1).max(200), source: text().min(1).max(100).default('default'), consistentWith: z.number().int().min(0).optional() }).strict(),
    response: usageRecordViewSchema,
  }),
};

// ---- HTTP routes ----

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const inTenant = { tenantParam: 'tenantId' } as const;

/** The report as CSV: a column per dimension grouped by, then the measures; the total last. */
export function usageReportCsv(r: UsageReport): string {
  const names = ['inputTokens', 'cachedInputTokens', 'outputTokens', 'requests', 'gpuSeconds', 'cost', 'records', 'unpricedRecords'] as const;
  const lines = [[...r.groupBy, ...names].map(csvField).join(',')];
  for (const row of r.rows) lines.push([...r.groupBy.map((d) => textCell(row.key[d] ?? null)), ...names.map((n) => row[n])].map(csvField).join(','));
  lines.push([...r.groupBy.map((_, i) => (i === 0 ? 'TOTAL' : '')), ...names.map((n) => r.total[n])].map(csvField).join(','));
  return lines.join('\n') + '\n';
}

export const usageRoutes = routeGroup({
  record: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/usage', permission: P.usageWrite, tag: 'usage',
    summary: 'Report usage: a batch of up to 1,000 records, each counted once (202 with a result per record)',
    params: tenantParams, body: usageBatchSchema, response: { status: 202, schema: usageAnswerSchema },
    forward: { rpc: billingRpc.recordUsage },
  }),
  report: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/usage/report', permission: P.usageRead, tag: 'usage',
    summary: 'Usage and cost over a period, grouped by attribution (rows add up to the total); JSON or CSV',
    params: tenantParams, query: usageReportQuerySchema,
    response: { status: 200, schema: usageReportSchema, description: 'The report; with format=csv, text/csv with a row per group and the total last' },
    forward: {
      rpc: billingRpc.usageReport,
      request: ({ params, query: { format: _format, ...q } }) => ({ ...q, ...params }),
      csv: (answer) => ({ filename: 'usage-report.csv', text: usageReportCsv(answer) }),
    },
  }),
  forecast: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/usage/forecast', permission: P.usageRead, tag: 'usage',
    summary: "Run-rate to the month's end, and the date each budget is projected to be reached",
    params: tenantParams, query: z.object({ timeZone: text().min(1).max(64).optional() }).strict(),
    response: { status: 200, schema: usageForecastSchema },
    forward: { rpc: billingRpc.usageForecast },
  }),
  getRecord: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/usage/records/{recordId}', permission: P.usageRead, tag: 'usage',
    summary: 'One usage record as counted and rated (with the price version it used)',
    params: z.object({ tenantId: z.uuid(), recordId: text().min(1).max(200) }).strict(),
    query: z.object({ source: text().min(1).max(100).optional(), consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: usageRecordViewSchema },
    forward: { rpc: billingRpc.usageRecord },
  }),
  rerate: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/usage/rerate', permission: P.pricesWrite, tag: 'usage',
    summary: "Re-rate a time range with today's prices (after a price fix; nothing is deleted)",
    params: tenantParams, body: rerateSchema, response: { status: 202, schema: z.object({ position: positionSchema }) },
    forward: { rpc: billingRpc.rerate },
  }),
});

const budgetParams = z.object({ tenantId: z.uuid(), budgetId: z.uuid() }).strict();
export const budgetRoutes = routeGroup({
  create: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/budgets', permission: P.budgetsWrite, tag: 'budgets',
    summary: 'Create a budget (tenant, team, user, project, model, environment or API key; money or tokens; calendar periods in a time zone)',
    params: tenantParams, body: budgetBodySchema, idempotent: true, response: { status: 201, schema: budgetAnswerSchema },
    forward: { rpc: billingRpc.createBudget },
  }),
  list: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/budgets', permission: P.budgetsRead, tag: 'budgets',
    summary: 'Budgets with spent, reserved and remaining in their current period',
    params: tenantParams, query: z.object({ consistentWith: consistentWithParam }).strict(), response: { status: 200, schema: listOf(budgetSchema) },
    forward: { rpc: billingRpc.budgets },
  }),
  get: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/budgets/{budgetId}', permission: P.budgetsRead, tag: 'budgets',
    summary: 'One budget with spent, reserved and remaining in its current period',
    params: budgetParams, query: z.object({ consistentWith: consistentWithParam }).strict(), response: { status: 200, schema: budgetSchema },
    forward: { rpc: billingRpc.budget },
  }),
  update: route({
    ...inTenant, method: 'PATCH', path: '/api/v1/tenants/{tenantId}/budgets/{budgetId}', permission: P.budgetsWrite, tag: 'budgets', conditional: true,
    summary: "Change a budget's name, limit, thresholds or fail mode", params: budgetParams, body: budgetPatchSchema, response: { status: 200, schema: budgetAnswerSchema },
    forward: { rpc: billingRpc.updateBudget },
  }),
  remove: route({
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/budgets/{budgetId}', permission: P.budgetsWrite, tag: 'budgets',
    summary: 'Delete a budget', params: budgetParams, response: { status: 200, schema: z.object({ deleted: z.literal(true), position: positionSchema }) },
    forward: { rpc: billingRpc.deleteBudget },
  }),
});

const reservationParams = z.object({ tenantId: z.uuid(), requestId: text().min(1).max(200) }).strict();
export const reservationRoutes = routeGroup({
  reserve: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/usage/reservations', permission: P.usageWrite, tag: 'usage',
    summary: 'Before a call: reserve its estimate on every budget that applies (402 naming the budget without room)',
    params: tenantParams, body: reservationRequestSchema, response: { status: 201, schema: reservationSchema },
    forward: { rpc: billingRpc.reserve },
  }),
  settle: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/usage/reservations/{requestId}/settle', permission: P.usageWrite, tag: 'usage',
    summary: 'After a call: settle with what it used (the usage record), once per request id',
    params: reservationParams, body: settleSchema, response: { status: 200, schema: reservationSchema },
    forward: { rpc: billingRpc.settle },
  }),
  release: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/usage/reservations/{requestId}/release', permission: P.usageWrite, tag: 'usage',
    summary: 'A call that used nothing: release its reservation, once per request id',
    params: reservationParams, body: z.object({}).strict().optional(), response: { status: 200, schema: reservationSchema },
    forward: { rpc: billingRpc.release },
  }),
});

export const priceRoutes = routeGroup({
  list: route({
    method: 'GET', path: '/api/v1/billing/prices', permission: P.pricesRead, tag: 'prices', summary: "The platform's price list (every version)",
    query: z.object({ consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: listOf(priceSchema) },
    forward: { rpc: billingRpc.prices, request: ({ query: q }) => ({ ...q, scope: PLATFORM_PRICES }) },
  }),
  publish: route({
    method: 'POST', path: '/api/v1/billing/prices', permission: P.pricesWrite, tag: 'prices',
    summary: "Publish a model's price on the platform list (a new version, effective from a time)",
    body: publishPriceSchema, response: { status: 201, schema: priceSchema },
    forward: { rpc: billingRpc.publishPrice, request: ({ body }, caller) => ({ meta: caller.meta, payload: { scope: PLATFORM_PRICES, data: body } }) },
  }),
  tenantList: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/prices', permission: P.pricesRead, tag: 'prices',
    summary: "The prices that rate a tenant's usage: its overrides, then the platform list",
    params: tenantParams, query: z.object({ consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: listOf(priceSchema) },
    forward: { rpc: billingRpc.prices, request: ({ params, query: q }) => ({ ...q, scope: params.tenantId }) },
  }),
  tenantPublish: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/prices', permission: P.pricesWrite, tag: 'prices',
    summary: "Publish a tenant's own price for a model (a negotiated rate; it wins over the platform list)",
    params: tenantParams, body: publishPriceSchema, response: { status: 201, schema: priceSchema },
    forward: { rpc: billingRpc.publishPrice, request: ({ params, body }, caller) => ({ meta: caller.meta, payload: { scope: params.tenantId, data: body } }) },
  }),
});

/** The billing service's contract (listed from services.manifest.json in services.generated.ts). */
export const billingContract = serviceContract({
  service: 'billing',
  routes: { usage: usageRoutes, prices: priceRoutes, budgets: budgetRoutes, reservations: reservationRoutes, webhooks: webhookRoutes, invoices: invoiceRoutes },
  rpcs: { ...billingRpc, ...webhookRpc, ...invoiceRpc },
  events: { ...billingEventSchemas, ...webhookEventSchemas, ...invoiceEventSchemas },
  projections: 'dead-letters',
});
