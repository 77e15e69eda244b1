import { z } from 'zod';
import { command, commandRequest, consistentWithParam, isoTime, listOf, positionSchema, query, route, routeGroup } from './contract';
import { permissions as P } from './permissions';
import { planSchema } from './tenant';
import { csvField, textCell } from './csv';
import { decimalSchema } from './decimal';
import { text } from './text';

/**
 * Plans' prices, seats and invoices (served by the billing service, declared here and merged into
 * its contract). A tenant is invoiced per calendar month of its time zone: at the month's close a
 * `draft` (late usage still counted) becomes `finalized` after the grace window (immutable, numbered
 * from a gapless per-tenant sequence), and may be `void`ed with a credit note; a corrected invoice
 * for the period may follow. See the README's "Invoices" section.
 */
export const PLAN_PRICE_AGGREGATE = 'plan_price';
/** One per tenant: its invoices, numbers and credit notes, so that numbering is one sequence, checked at each append. */
export const INVOICE_BOOK_AGGREGATE = 'invoice_book';

/** A non-negative money amount in USD, exact (a JSON string or a plain number), as its canonical text. */
const money = decimalSchema;

const INVOICE_PERIOD = /^[2-9]\d{3}-(0[1-9]|1[0-2])$/;
export const invoicePeriodSchema = text().regex(INVOICE_PERIOD, 'must be a month (YYYY-MM)');

export const planPriceBodySchema = z
  .object({
    plan: planSchema,
    currency: z.literal('USD').default('USD'),
    /** Per seat (an active user) and month, prorated by the days a user was active. */
    seat: money.default('0'),
    /** Per month, prorated by the days the tenant existed in its first month. */
    fixedFee: money.default('0'),
    /** Usage (rated at the model prices) included each month before it is charged. */
    includedUsage: money.default('0'),
    /** The most usage charged in a month (after the included part); none when left out. */
    usageCap: money.optional(),
    /** The least an invoice comes to (a commitment); the difference is a line of its own. */
    minimum: money.optional(),
    effectiveFrom: z.iso.datetime({ offset: true }),
  })
  .strict();
export type PlanPriceBody = z.infer<typeof planPriceBodySchema>;

export const planPriceSchema = z
  .object({
    scope: text(),
    plan: planSchema,
    version: z.number().int(),
    currency: text(),
    seat: text(),
    fixedFee: text(),
    includedUsage: text(),
    usageCap: text().nullable(),
    minimum: text().nullable(),
    effectiveFrom: isoTime,
    publishedAt: isoTime,
    position: positionSchema,
  })
  .meta({ id: 'PlanPrice' });
export type PlanPrice = z.infer<typeof planPriceSchema>;

export const seatsSchema = z
  .object({
    tenantId: z.uuid(),
    /** The plan's `maxUsers`. */
    allowed: z.number().int(),
    /** Active users now. */
    used: z.number().int(),
    /** The current invoice period (a month of the tenant's time zone) and the seat-days in it so far. */
    periodStart: isoTime,
    periodEnd: isoTime,
    seatDays: z.number().int(),
    daysInPeriod: z.number().int(),
  })
  .meta({ id: 'Seats' });

export const invoiceLineSchema = z.object({
  kind: z.enum(['fixed_fee', 'seats', 'usage', 'included_usage', 'usage_cap', 'minimum']),
  description: text(),
  /** Seat-days, tokens…: what `unitAmount` is multiplied by (as exact text). */
  quantity: text(),
  unitAmount: text(),
  /** In cents precision (2 decimals); the lines add up to the total. */
  amount: text(),
  /** The model, for a usage line. */
  model: text().optional(),
});
export type InvoiceLine = z.infer<typeof invoiceLineSchema>;

export const invoiceStatuses = ['draft', 'finalized', 'void'] as const;
export const invoiceSchema = z
  .object({
    id: z.uuid(),
    tenantId: z.uuid(),
    /** `INV-000001`, from the tenant's gapless sequence once finalized. */
    number: text().nullable(),
    period: text(),
    periodStart: isoTime,
    periodEnd: isoTime,
    timeZone: text(),
    status: z.enum(invoiceStatuses),
    currency: text(),
    plan: text().nullable(),
    /** The plan price version it used (null: the plan has no price). */
    planPrice: z.object({ scope: text(), version: z.number().int() }).nullable(),
    lines: z.array(invoiceLineSchema),
    total: text(),
    /** A draft becomes final then (late usage for the period counts until). */
    finalizesAt: isoTime.nullable(),
    finalizedAt: isoTime.nullable(),
    voidedAt: isoTime.nullable(),
    voidReason: text({ multiline: true }).nullable(),
    /** The credit note a void issued (`CN-000001`, its own gapless sequence), for the invoice's total. */
    creditNote: z.object({ number: text(), amount: text() }).nullable(),
    createdAt: isoTime,
    position: positionSchema,
  })
  .meta({ id: 'Invoice' });
export type Invoice = z.infer<typeof invoiceSchema>;

export const invoiceEventTypes = {
  planPricePublished: 'billing.plan_price.published',
  drafted: 'billing.invoice_book.invoice_drafted',
  finalized: 'billing.invoice_book.invoice_finalized',
  voided: 'billing.invoice_book.invoice_voided',
} as const;

const lineView = z.object({ kind: text(), description: text(), quantity: text(), unitAmount: text(), amount: text(), model: text().optional() });
export const invoiceEventSchemas = {
  [invoiceEventTypes.planPricePublished]: z.object({
    scope: text(), plan: text(), currency: text(), seat: text(), fixedFee: text(), includedUsage: text(), usageCap: text().nullable(), minimum: text().nullable(), effectiveFrom: isoTime,
  }),
  /** `plan`: the tenant's plan when the month was closed, which it is invoiced on. */
  [invoiceEventTypes.drafted]: z.object({ invoiceId: z.uuid(), period: text(), periodStart: isoTime, periodEnd: isoTime, timeZone: text(), plan: text().optional(), finalizesAt: isoTime }),
  /** What the invoice says, for good: its lines were computed when it was finalized. */
  [invoiceEventTypes.finalized]: z.object({
    invoiceId: z.uuid(),
    number: text(),
    currency: text(),
    plan: text().nullable(),
    planPrice: z.object({ scope: text(), version: z.number().int() }).nullable(),
    lines: z.array(lineView),
    total: text(),
  }),
  [invoiceEventTypes.voided]: z.object({ invoiceId: z.uuid(), reason: text({ multiline: true }), creditNote: z.object({ number: text(), amount: text() }) }),
};

const tenantScope = z.uuid();
const PLATFORM = 'platform';
const invoiceRef = z.object({ tenantId: tenantScope, invoiceId: z.uuid() });

export const invoiceRpc = {
  publishPlanPrice: command('billing', 'publish_plan_price', {
    summary: "Publish a plan's price (a new version; the platform list, or a tenant's own)",
    request: commandRequest(z.object({ scope: z.union([z.literal(PLATFORM), tenantScope]), data: planPriceBodySchema }).strict()),
    response: planPriceSchema,
  }),
  planPrices: query('billing', 'plan_prices', {
    summary: 'Plan prices of a scope (a tenant: its own, then the platform list)',
    request: z.object({ scope: z.union([z.literal(PLATFORM), tenantScope]), consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(planPriceSchema),
  }),
  seats: query('billing', 'seats', { summary: 'Seats allowed and used', request: z.object({ tenantId: tenantScope }).strict(), response: seatsSchema }),
  closePeriod: command('billing', 'close_period', {
    summary: "Close a tenant's month: its draft invoice (none made twice for a period)",
    request: commandRequest(z.object({ tenantId: tenantScope, data: z.object({ period: invoicePeriodSchema }).strict() }).strict()),
    response: z.object({ invoice: invoiceSchema, created: z.boolean(), position: positionSchema }),
  }),
  finalizeInvoice: command('billing', 'finalize_invoice', {
    summary: 'Finalize a draft now (its number is the next of the tenant)',
    request: commandRequest(invoiceRef.strict()),
    response: z.object({ invoice: invoiceSchema, position: positionSchema }),
  }),
  voidInvoice: command('billing', 'void_invoice', {
    summary: 'Void a finalized invoice with a credit note for its total',
    request: commandRequest(invoiceRef.extend({ data: z.object({ reason: text({ multiline: true }).trim().min(1, 'say why').max(1_000) }).strict() }).strict()),
    response: z.object({ invoice: invoiceSchema, position: positionSchema }),
  }),
  invoices: query('billing', 'invoices', {
    summary: "A tenant's invoices, newest period first",
    request: z.object({ tenantId: tenantScope, consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(invoiceSchema),
  }),
  invoice: query('billing', 'invoice', {
    summary: 'One invoice (a draft with its lines as they are now)',
    request: invoiceRef.extend({ consistentWith: z.number().int().min(0).optional() }).strict(),
    response: invoiceSchema,
  }),
  upcomingInvoice: query('billing', 'upcoming_invoice', {
    summary: 'The current month as it would be invoiced now (a preview, not stored)',
    request: z.object({ tenantId: tenantScope }).strict(),
    response: invoiceSchema.omit({ id: true, position: true }).extend({ id: z.null(), position: z.null() }),
  }),
};

/** An invoice as CSV: a row per line, then the total. */
export function invoiceCsv(i: Pick<Invoice, 'number' | 'period' | 'status' | 'currency' | 'lines' | 'total'>): string {
  const rows = [['invoice', 'period', 'status', 'kind', 'description', 'model', 'quantity', 'unitAmount', 'amount', 'currency']];
  for (const l of i.lines) rows.push([i.number ?? '', i.period, i.status, l.kind, textCell(l.description)!, textCell(l.model ?? '')!, l.quantity, l.unitAmount, l.amount, i.currency]);
  rows.push([i.number ?? '', i.period, i.status, 'total', '', '', '', '', i.total, i.currency]);
  return rows.map((r) => r.map(csvField).join(',')).join('\n') + '\n';
}

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const invoiceParams = z.object({ tenantId: z.uuid(), invoiceId: z.uuid() }).strict();
const inTenant = { tenantParam: 'tenantId' } as const;
const consistent = z.object({ consistentWith: consistentWithParam }).strict();

export const invoiceRoutes = routeGroup({
  planPrices: route({
    method: 'GET', path: '/api/v1/billing/plan-prices', permission: P.pricesRead, tag: 'invoices', summary: "The platform's plan prices (every version)",
    query: consistent, response: { status: 200, schema: listOf(planPriceSchema) },
    forward: { rpc: invoiceRpc.planPrices, request: ({ query: q }) => ({ ...q, scope: PLATFORM }) },
  }),
  publishPlanPrice: route({
    method: 'POST', path: '/api/v1/billing/plan-prices', permission: P.pricesWrite, tag: 'invoices',
    summary: "Publish a plan's price: per seat, fixed fee, included usage, usage cap and minimum (a new version)",
    body: planPriceBodySchema, response: { status: 201, schema: planPriceSchema },
    forward: { rpc: invoiceRpc.publishPlanPrice, request: ({ body }, caller) => ({ meta: caller.meta, payload: { scope: PLATFORM, data: body } }) },
  }),
  tenantPlanPrice: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/plan-prices', permission: P.pricesWrite, tag: 'invoices',
    summary: "A tenant's own plan price (a negotiated contract; it wins over the platform list)",
    params: tenantParams, body: planPriceBodySchema, response: { status: 201, schema: planPriceSchema },
    forward: { rpc: invoiceRpc.publishPlanPrice, request: ({ params, body }, caller) => ({ meta: caller.meta, payload: { scope: params.tenantId, data: body } }) },
  }),
  seats: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/seats', permission: P.invoicesRead, tag: 'invoices',
    summary: 'Seats: allowed by the plan, used now, and the seat-days of the current month', params: tenantParams, response: { status: 200, schema: seatsSchema },
    forward: { rpc: invoiceRpc.seats },
  }),
  list: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/invoices', permission: P.invoicesRead, tag: 'invoices',
    summary: 'Invoices, newest period first', params: tenantParams, query: consistent, response: { status: 200, schema: listOf(invoiceSchema) },
    forward: { rpc: invoiceRpc.invoices },
  }),
  upcoming: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/invoices/upcoming', permission: P.invoicesRead, tag: 'invoices',
    summary: 'The current month as it would be invoiced now (a preview); JSON or CSV', params: tenantParams,
    query: z.object({ format: z.enum(['json', 'csv']).default('json') }).strict(),
    response: { status: 200, schema: invoiceRpc.upcomingInvoice.response },
    forward: { rpc: invoiceRpc.upcomingInvoice, request: ({ params }) => params, csv: (i) => ({ filename: `invoice-${i.period}-upcoming.csv`, text: invoiceCsv(i) }) },
  }),
  get: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/invoices/{invoiceId}', permission: P.invoicesRead, tag: 'invoices',
    summary: 'One invoice; JSON or CSV', params: invoiceParams,
    query: z.object({ format: z.enum(['json', 'csv']).default('json'), consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: invoiceSchema },
    forward: {
      rpc: invoiceRpc.invoice,
      request: ({ params, query: { format: _f, ...q } }) => ({ ...q, ...params }),
      csv: (i) => ({ filename: `invoice-${i.number ?? i.period}.csv`, text: invoiceCsv(i) }),
    },
  }),
  close: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/invoices', permission: P.invoicesWrite, tag: 'invoices',
    summary: 'Close a month: its draft invoice (the closer does this at each month end; a period is never invoiced twice)',
    params: tenantParams, body: z.object({ period: invoicePeriodSchema }).strict(), response: { status: 201, schema: invoiceRpc.closePeriod.response },
    forward: { rpc: invoiceRpc.closePeriod },
  }),
  finalize: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/invoices/{invoiceId}/finalize', permission: P.invoicesWrite, tag: 'invoices',
    summary: 'Finalize a draft before its grace window ends', params: invoiceParams, body: z.object({}).strict().optional(),
    response: { status: 200, schema: invoiceRpc.finalizeInvoice.response },
    forward: { rpc: invoiceRpc.finalizeInvoice },
  }),
  void: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/invoices/{invoiceId}/void', permission: P.invoicesWrite, tag: 'invoices',
    summary: 'Void a finalized invoice (a credit note for its total); the period may then be invoiced again', params: invoiceParams,
    body: z.object({ reason: text({ multiline: true }).trim().min(1, 'say why').max(1_000) }).strict(),
    response: { status: 200, schema: invoiceRpc.voidInvoice.response },
    forward: { rpc: invoiceRpc.voidInvoice },
  }),
});
