import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { DateTime } from 'luxon';
import { DataSource } from 'typeorm';
import {
  BILLING_CONTEXT,
  Invoice,
  USAGE_MAX_AGE_DAYS,
  INVOICE_BOOK_AGGREGATE,
  invoiceEventTypes as I,
  InvoiceLine,
  invoiceRpc,
  KeelError,
  nameBasedUuid,
  parseOrThrow,
  PlanPrice,
  PLAN_PRICE_AGGREGATE,
  PlanPriceBody,
} from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { CommandHandler, Decider } from '@keel/event-sourcing';
import { EventStore, InjectConfig, KEEL_LOGGER, MessagePattern } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ProjectionRunner } from '@keel/projections';
import { repeating } from '../periodic';
import { D } from '../usage/rating';
import { UsageHandlers } from '../usage/usage.handlers';
import { INVOICES_RUNNER } from './invoices.projection';

const SYSTEM = { actor: { kind: 'system' as const, id: 'billing.invoices' }, correlationId: 'billing.invoices' };

// ---- plan prices: one aggregate per scope and plan, every publish a version ----

type PlanPriceCommand = { type: 'publish'; scope: string; data: PlanPriceBody };
type PlanPriceEvent = { type: string; data: Record<string, unknown> };
export const planPriceDecider: Decider<{ versions: number }, PlanPriceCommand, PlanPriceEvent> = {
  initialState: () => ({ versions: 0 }),
  evolve: (s) => ({ versions: s.versions + 1 }),
  decide: (c) => [
    {
      type: I.planPricePublished,
      data: {
        scope: c.scope, plan: c.data.plan, currency: c.data.currency, seat: c.data.seat, fixedFee: c.data.fixedFee, includedUsage: c.data.includedUsage,
        usageCap: c.data.usageCap ?? null, minimum: c.data.minimum ?? null, effectiveFrom: new Date(c.data.effectiveFrom).toISOString(),
      },
    },
  ],
};

// ---- the invoice book: one aggregate per tenant, so that its numbers are one gapless sequence ----

interface BookInvoice {
  period: string;
  status: 'draft' | 'finalized' | 'void';
  periodEnd: string;
  total?: string;
}
export interface BookState {
  lastNumber: number;
  lastCreditNote: number;
  invoices: Record<string, BookInvoice>;
  /** The invoice of each period that is not void. */
  open: Record<string, string>;
  /** Invoices ever drafted per period (a corrected one after a void is the next). */
  drafted: Record<string, number>;
}
export type Computed = Pick<Invoice, 'currency' | 'plan' | 'planPrice' | 'lines' | 'total'>;
export type BookCommand =
  | { type: 'draft'; period: string; previous: string; periodStart: string; periodEnd: string; timeZone: string; plan: string; finalizesAt: string }
  | { type: 'finalize'; invoiceId: string; computed: Computed }
  | { type: 'void'; invoiceId: string; reason: string };
type BookEvent = { type: string; data: Record<string, unknown> };
type Meta = Parameters<CommandHandler<BookState, BookCommand, BookEvent>['handle']>[2];

export const invoiceIdOf = (tenantId: string, period: string, n: number) => nameBasedUuid(`keel.billing.invoice\n${tenantId.toLowerCase()}\n${period}\n${n}`);
const bookIdOf = (tenantId: string) => nameBasedUuid(`keel.billing.invoice-book\n${tenantId.toLowerCase()}`);
const numbered = (prefix: string, n: number) => `${prefix}-${String(n).padStart(6, '0')}`;

export const bookDecider = (tenantId: string): Decider<BookState, BookCommand, BookEvent> => ({
  initialState: () => ({ lastNumber: 0, lastCreditNote: 0, invoices: {}, open: {}, drafted: {} }),
  evolve(s, e) {
    const d = e.data as Record<string, string>;
    const invoices = { ...s.invoices };
    if (e.type === I.drafted) {
      invoices[d.invoiceId!] = { period: d.period!, status: 'draft', periodEnd: d.periodEnd! };
      return { ...s, invoices, open: { ...s.open, [d.period!]: d.invoiceId! }, drafted: { ...s.drafted, [d.period!]: (s.drafted[d.period!] ?? 0) + 1 } };
    }
    const inv = invoices[d.invoiceId!];
    if (!inv) return s;
    if (e.type === I.finalized) {
      invoices[d.invoiceId!] = { ...inv, status: 'finalized', total: d.total };
      return { ...s, invoices, lastNumber: s.lastNumber + 1 };
    }
    if (e.type === I.voided) {
      invoices[d.invoiceId!] = { ...inv, status: 'void' };
      const open = { ...s.open };
      if (open[inv.period] === d.invoiceId) delete open[inv.period];
      return { ...s, invoices, open, lastCreditNote: s.lastCreditNote + 1 };
    }
    return s;
  },
  decide(c, s) {
    if (c.type === 'draft') {
      // A period has at most one invoice that is not void: closing it again changes nothing.
      if (s.open[c.period]) return [];
      const invoiceId = invoiceIdOf(tenantId, c.period, (s.drafted[c.period] ?? 0) + 1);
      // A month begins where the previous month's invoice ended (a time zone changed in between moves no usage out of every invoice or into two).
      const before = s.open[c.previous] ? s.invoices[s.open[c.previous]!]?.periodEnd : undefined;
      const periodStart = before ?? c.periodStart;
      return [{ type: I.drafted, data: { invoiceId, period: c.period, periodStart, periodEnd: c.periodEnd, timeZone: c.timeZone, plan: c.plan, finalizesAt: c.finalizesAt } }];
    }
    const inv = s.invoices[c.invoiceId];
    if (!inv) throw new KeelError('not_found', 'No such invoice in this tenant.');
    if (c.type === 'finalize') {
      if (inv.status === 'finalized') return [];
      if (inv.status === 'void') throw new KeelError('invalid_transition', 'This invoice is void; it is never finalized.');
      return [{ type: I.finalized, data: { invoiceId: c.invoiceId, number: numbered('INV', s.lastNumber + 1), ...c.computed } }];
    }
    if (inv.status === 'void') return [];
    if (inv.status === 'draft') throw new KeelError('invalid_transition', 'A draft is not voided: it becomes final at the end of its grace window (or finalize it now), then it may be voided.');
    return [{ type: I.voided, data: { invoiceId: c.invoiceId, reason: c.reason, creditNote: { number: numbered('CN', s.lastCreditNote + 1), amount: inv.total ?? '0.00' } } }];
  },
});

// ---- reading ----

interface Account {
  tenant_id: string;
  plan: string;
  max_users: number;
  time_zone: string;
  created_at: Date;
  closed_at: Date | null;
}
interface PlanPriceRow {
  scope: string;
  plan: string;
  version: number;
  currency: string;
  seat: string;
  fixed_fee: string;
  included_usage: string;
  usage_cap: string | null;
  minimum: string | null;
  effective_from: Date;
  published_at: Date;
  position: string;
}
interface InvoiceRow {
  tenant_id: string;
  id: string;
  period: string;
  period_start: Date;
  period_end: Date;
  time_zone: string;
  status: Invoice['status'];
  number: string | null;
  currency: string | null;
  plan: string | null;
  plan_price: Invoice['planPrice'];
  lines: InvoiceLine[] | null;
  total: string | null;
  finalizes_at: Date;
  finalized_at: Date | null;
  voided_at: Date | null;
  void_reason: string | null;
  credit_note: Invoice['creditNote'];
  created_at: Date;
  position: string;
}

const toPlanPrice = (r: PlanPriceRow): PlanPrice => ({
  scope: r.scope, plan: r.plan as PlanPrice['plan'], version: r.version, currency: r.currency, seat: new D(r.seat).toFixed(), fixedFee: new D(r.fixed_fee).toFixed(),
  includedUsage: new D(r.included_usage).toFixed(), usageCap: r.usage_cap === null ? null : new D(r.usage_cap).toFixed(), minimum: r.minimum === null ? null : new D(r.minimum).toFixed(),
  effectiveFrom: r.effective_from.toISOString(), publishedAt: r.published_at.toISOString(), position: Number(r.position),
});

const cents = (v: InstanceType<typeof D>) => v.toDecimalPlaces(2, D.ROUND_HALF_UP);

const DAY = 86_400_000;
const validZone = (zone: string) => (DateTime.now().setZone(zone).isValid ? zone : 'UTC');

/** What an invoice covers: from its start to its end (a month of its zone), the month's days. */
export interface Range {
  start: DateTime;
  end: DateTime;
  days: number;
  zone: string;
}
const rangeOf = (row: { period: string; period_start: Date; period_end: Date; time_zone: string }): Range => {
  const zone = validZone(row.time_zone);
  return { start: DateTime.fromJSDate(row.period_start, { zone }), end: DateTime.fromJSDate(row.period_end, { zone }), days: monthOf(row.period, zone).days, zone };
};
const withoutUnpriced = ({ unpriced: _u, ...c }: Computed & { unpriced: number }): Computed => c;

/** A month of `zone`: its local midnights as instants, and its days. */
export function monthOf(period: string, zone: string): { start: DateTime; end: DateTime; days: number } {
  const [y, m] = period.split('-').map(Number) as [number, number];
  const start = DateTime.fromObject({ year: y, month: m, day: 1 }, { zone });
  return { start, end: start.plus({ months: 1 }), days: start.daysInMonth! };
}

/**
 * Plan prices, seats and invoices. A tenant's month is closed into a `draft` (by the closer at the
 * month's end, or by an operator), whose lines are computed when read until it is finalized after
 * `KEEL_INVOICE_GRACE_SECONDS`; finalizing numbers it and fixes its lines in the event. Every
 * decision is on the tenant's invoice book, checked at the append: whatever replicas, retries and
 * restarts do, a period has one invoice and the numbers have no gap.
 */
@Injectable()
export class InvoiceHandlers implements OnModuleInit, OnModuleDestroy {
  private readonly planPrices: CommandHandler<{ versions: number }, PlanPriceCommand, PlanPriceEvent>;
  private readonly books = new Map<string, CommandHandler<BookState, BookCommand, BookEvent>>();
  private loop?: { stop(): void };
  /** Drafts that could not be finalized, and when to try again. */
  private readonly failed = new Map<string, number>();

  constructor(
    private readonly store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(INVOICES_RUNNER) private readonly invoicesRunner: ProjectionRunner,
    private readonly usageRunner: ProjectionRunner,
    private readonly usage: UsageHandlers,
    @InjectConfig() private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {
    this.planPrices = new CommandHandler(store, { context: BILLING_CONTEXT, aggregateType: PLAN_PRICE_AGGREGATE, decider: planPriceDecider });
  }

  private book(tenantId: string): CommandHandler<BookState, BookCommand, BookEvent> {
    let h = this.books.get(tenantId);
    if (!h) {
      h = new CommandHandler(this.store, { context: BILLING_CONTEXT, aggregateType: INVOICE_BOOK_AGGREGATE, decider: bookDecider(tenantId), cacheSize: 1 });
      if (this.books.size > 1_000) this.books.delete(this.books.keys().next().value!);
      this.books.set(tenantId, h);
    }
    return h;
  }

  private decideBook(tenantId: string, c: BookCommand, meta: Meta) {
    return this.book(tenantId).handle({ tenantId, aggregateId: bookIdOf(tenantId) }, c, meta);
  }

  onModuleInit(): void {
    this.loop = repeating('closing invoice periods', this.config.KEEL_INVOICE_CLOSE_INTERVAL_MS, () => this.close(), this.logger);
  }

  onModuleDestroy(): void {
    this.loop?.stop();
  }

  /**
   * The closer: the last two months that ended get their draft if they never had an invoice (a
   * closer down longer leaves older months to an operator), for a tenant that existed in them; and
   * every draft past its grace window is finalized. One failing tenant or invoice is logged and
   * skipped, never blocking the rest.
   */
  async close(now = Date.now()): Promise<void> {
    const due: { tenant_id: string; id: string }[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT tenant_id, id FROM invoices WHERE status = 'draft' AND finalizes_at <= $1 AND NOT (id = ANY($2)) ORDER BY finalizes_at LIMIT 100`, [
        new Date(now),
        [...this.failed].filter(([, until]) => until > now).map(([id]) => id),
      ]),
    );
    // One that could not be finalized (its usage unpriced, say) is tried again an hour later, not first at every tick.
    const ready = due.filter((d) => (this.failed.get(d.id) ?? 0) <= now);
    if (ready.length) await this.usageCaughtUp();
    for (const d of ready) {
      await this.finalizeNow(d.tenant_id, d.id, SYSTEM, false).then(
        () => this.failed.delete(d.id),
        (error) => {
          this.failed.set(d.id, now + 3_600_000);
          this.logger.warn({ err: error, tenantId: d.tenant_id, invoiceId: d.id }, 'could not finalize an invoice; trying again in an hour');
        },
      );
    }
    const accounts: (Account & { periods: string[] | null })[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT a.*, (SELECT array_agg(DISTINCT period) FROM invoices i WHERE i.tenant_id = a.tenant_id) AS periods FROM billing_accounts a`),
    );
    for (const a of accounts) {
      const zone = validZone(a.time_zone);
      const had = new Set(a.periods ?? []);
      const thisMonth = DateTime.fromMillis(now, { zone }).startOf('month');
      for (const p of [thisMonth.minus({ months: 2 }), thisMonth.minus({ months: 1 })]) {
        const period = p.toFormat('yyyy-MM');
        // Only months the tenant existed in (from the month it was made to the month it was closed).
        if (had.has(period) || p.plus({ months: 1 }).toJSDate() <= a.created_at || (a.closed_at && p.toJSDate() > a.closed_at)) continue;
        await this.draft(a.tenant_id, period, SYSTEM, now).catch((error) => this.logger.warn({ err: error, tenantId: a.tenant_id, period }, 'could not close a period'));
      }
    }
  }

  /** Until the usage projection has applied what it was sent (at most 2 s): usage reported until now counts. */
  private async usageCaughtUp(): Promise<void> {
    for (const until = Date.now() + 2_000; Date.now() < until && (await this.usageRunner.lag().catch(() => 0)) > 0; ) await new Promise((r) => setTimeout(r, 20));
  }

  private async account(tenantId: string): Promise<Account> {
    const [a]: Account[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT * FROM billing_accounts WHERE tenant_id = $1`, [tenantId]));
    if (!a) throw new KeelError('not_found', 'No such tenant (or billing has not seen it yet: retry shortly).');
    return a;
  }

  /**
   * Closes a month into its draft. The month is the tenant's time zone's, except that it begins
   * where the previous month's invoice ended: a time zone changed in between moves no usage out of
   * every invoice or into two. A month before the tenant existed (less the 35 days usage may be
   * late) or after it was closed is refused.
   */
  private async draft(tenantId: string, period: string, meta: Meta, now = Date.now()) {
    const account = await this.account(tenantId);
    const zone = validZone(account.time_zone);
    const natural = monthOf(period, zone);
    const invalid = (message: string) => new KeelError('validation_failed', `period: ${message}`, [{ field: 'period', message }]);
    if (natural.end.toMillis() <= account.created_at.getTime() - USAGE_MAX_AGE_DAYS * DAY) throw invalid(`${period} ended before this tenant existed`);
    if (account.closed_at && natural.start.toMillis() > account.closed_at.getTime()) throw invalid(`${period} began after this tenant was closed`);
    if (natural.end.toMillis() > now) throw new KeelError('invalid_transition', `${period} has not ended in ${zone} (it ends ${natural.end.toUTC().toISO()}); a period is closed once it has.`);
    const previous = natural.start.minus({ months: 1 }).toFormat('yyyy-MM');
    return this.decideBook(tenantId, {
      type: 'draft', period, previous, periodStart: natural.start.toUTC().toISO()!, periodEnd: natural.end.toUTC().toISO()!, timeZone: zone, plan: account.plan,
      finalizesAt: new Date(Math.max(now, natural.end.toMillis()) + this.config.KEEL_INVOICE_GRACE_SECONDS * 1_000).toISOString(),
    }, meta);
  }

  private async finalizeNow(tenantId: string, invoiceId: string, meta: Meta, catchUp = true) {
    const row = await this.row(tenantId, invoiceId);
    if (catchUp) await this.usageCaughtUp();
    const computed = await this.compute(tenantId, rangeOf(row), row.plan, row.period_end.getTime());
    const unpriced = computed.unpriced;
    if (unpriced > 0) {
      throw new KeelError('invalid_transition', `${unpriced} usage records of ${row.period} have no price: publish their prices and re-rate the month, then finalize.`);
    }
    return this.decideBook(tenantId, { type: 'finalize', invoiceId, computed: withoutUnpriced(computed) }, meta);
  }

  /**
   * The lines of a tenant's month as they are now: the plan's fixed fee (prorated by the days the
   * tenant existed in it, from the day it was made to the day it was closed), its seats (seat-days
   * × the seat price ÷ the month's days), the usage of each model at its rated cost, the included
   * usage and the usage cap, and the minimum (prorated like the fee). Each line in cents (half up),
   * the included usage and the cap taken from the usage lines as billed; the total is their sum.
   */
  async compute(tenantId: string, range: Range, plan: string | null, until: number): Promise<Computed & { unpriced: number }> {
    const account = await this.account(tenantId);
    const { start, end, days, zone } = range;
    const planName = plan ?? account.plan;
    const [price]: PlanPriceRow[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT * FROM plan_prices WHERE scope = ANY($1) AND plan = $2 AND effective_from < $3 ORDER BY scope = 'platform', effective_from DESC, version DESC LIMIT 1`, [
        [tenantId, 'platform'], planName, end.toJSDate(),
      ]),
    );
    const lines: InvoiceLine[] = [];
    const add = (l: Omit<InvoiceLine, 'amount'>, exact: InstanceType<typeof D>) => lines.push({ ...l, amount: cents(exact).toFixed(2) });
    const dayOf = (d: Date) => DateTime.fromJSDate(d, { zone }).startOf('day');
    const from = DateTime.max(start, dayOf(account.created_at));
    const to = account.closed_at ? DateTime.min(end, dayOf(account.closed_at).plus({ days: 1 })) : end;
    const existed = Math.max(0, Math.min(days, Math.round(to.diff(from, 'days').days)));
    if (price) {
      const fee = new D(price.fixed_fee);
      if (!fee.isZero()) add({ kind: 'fixed_fee', description: `${planName} plan, ${existed} of ${days} days`, quantity: String(existed), unitAmount: fee.div(days).toFixed(12) }, fee.mul(existed).div(days));
      const seat = new D(price.seat);
      if (!seat.isZero()) {
        const seatDays = await this.seatDays(tenantId, start.toJSDate(), new Date(Math.min(end.toMillis(), until)), zone);
        add({ kind: 'seats', description: `Seats: ${seatDays} seat-days of ${days} days`, quantity: String(seatDays), unitAmount: seat.div(days).toFixed(12) }, seat.mul(seatDays).div(days));
      }
    }
    const report = await this.usage.report({ tenantId, from: start.toUTC().toISO(), to: end.toUTC().toISO(), groupBy: ['model'] });
    let usage = new D(0);
    for (const r of report.rows) {
      const cost = new D(r.cost);
      add({ kind: 'usage', model: r.key.model ?? undefined, description: `Usage: ${r.key.model} (${r.records} records)`, quantity: '1', unitAmount: cost.toFixed() }, cost);
      usage = usage.add(lines[lines.length - 1]!.amount);
    }
    if (price) {
      const included = D.min(usage, cents(new D(price.included_usage)));
      if (!included.isZero()) add({ kind: 'included_usage', description: 'Usage included in the plan', quantity: '1', unitAmount: included.neg().toFixed(2) }, included.neg());
      const charged = usage.sub(included);
      if (price.usage_cap !== null && charged.gt(price.usage_cap)) {
        const over = charged.sub(cents(new D(price.usage_cap)));
        if (!over.isZero()) add({ kind: 'usage_cap', description: `Usage above the cap of ${new D(price.usage_cap).toFixed()} USD`, quantity: '1', unitAmount: over.neg().toFixed(2) }, over.neg());
      }
    }
    const subtotal = lines.reduce((s, l) => s.add(l.amount), new D(0));
    if (price && price.minimum !== null && existed > 0) {
      const minimum = cents(new D(price.minimum).mul(existed).div(days));
      if (subtotal.lt(minimum)) {
        const rest = minimum.sub(subtotal);
        add({ kind: 'minimum', description: `Minimum of ${new D(price.minimum).toFixed()} USD a month (${existed} of ${days} days)`, quantity: '1', unitAmount: rest.toFixed(2) }, rest);
      }
    }
    const total = lines.reduce((s, l) => s.add(l.amount), new D(0));
    return { currency: 'USD', plan: planName, planPrice: price ? { scope: price.scope, version: price.version } : null, lines, total: total.toFixed(2), unpriced: report.total.unpricedRecords };
  }

  /** The days of [from, to) in `zone` on which each user was active, added up. */
  private async seatDays(tenantId: string, from: Date, to: Date, zone: string): Promise<number> {
    if (to <= from) return 0;
    const [r]: { n: number }[] = await inTenant(this.ds, tenantId, (m) =>
      m.query(
        `SELECT count(*)::int AS n FROM (
           SELECT DISTINCT i.user_id, d FROM seat_intervals i,
             LATERAL generate_series(date_trunc('day', greatest(i.active_from, $2) AT TIME ZONE $4),
                                     date_trunc('day', (least(coalesce(i.active_to, 'infinity'), $3) - interval '1 microsecond') AT TIME ZONE $4),
                                     interval '1 day') AS d
            WHERE i.tenant_id = $1 AND i.active_from < $3 AND coalesce(i.active_to, 'infinity') > $2) days`,
        [tenantId, from, to, zone],
      ),
    );
    return r?.n ?? 0;
  }

  private async row(tenantId: string, invoiceId: string): Promise<InvoiceRow> {
    const [row]: InvoiceRow[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT * FROM invoices WHERE tenant_id = $1 AND id = $2`, [tenantId, invoiceId]));
    if (!row) throw new KeelError('not_found', 'No such invoice in this tenant.');
    return row;
  }

  /** An invoice as it is: a draft's lines computed now, a finalized or void one's as finalized. */
  private async view(row: InvoiceRow): Promise<Invoice> {
    const computed: Computed =
      row.status === 'draft'
        ? withoutUnpriced(await this.compute(row.tenant_id, rangeOf(row), row.plan, row.period_end.getTime()))
        : { currency: row.currency ?? 'USD', plan: row.plan, planPrice: row.plan_price, lines: row.lines ?? [], total: row.total ?? '0.00' };
    return {
      id: row.id, tenantId: row.tenant_id, number: row.number, period: row.period, periodStart: row.period_start.toISOString(), periodEnd: row.period_end.toISOString(),
      timeZone: row.time_zone, status: row.status, ...computed, finalizesAt: row.status === 'draft' ? row.finalizes_at.toISOString() : null,
      finalizedAt: row.finalized_at?.toISOString() ?? null, voidedAt: row.voided_at?.toISOString() ?? null, voidReason: row.void_reason, creditNote: row.credit_note,
      createdAt: row.created_at.toISOString(), position: Number(row.position),
    };
  }

  private async applied(tenantId: string, invoiceId: string, position: number): Promise<Invoice> {
    await this.invoicesRunner.waitFor(position, this.config.KEEL_CONSISTENCY_WAIT_MS);
    return this.view(await this.row(tenantId, invoiceId));
  }

  // ---- commands ----

  @MessagePattern('cmd.billing.publish_plan_price')
  async publishPlanPrice(body: unknown): Promise<PlanPrice> {
    const { meta, payload: sent } = parseOrThrow(invoiceRpc.publishPlanPrice.request, body, 'plan price');
    // A tenant's id in any case names the same scope.
    const payload = { ...sent, scope: sent.scope.toLowerCase() };
    const tenantId = payload.scope;
    const r = await this.planPrices.handle({ tenantId, aggregateId: nameBasedUuid(`keel.billing.plan-price\n${payload.scope}\n${payload.data.plan}`) }, { type: 'publish', scope: payload.scope, data: payload.data }, meta);
    const d = planPriceDecider.decide({ type: 'publish', scope: payload.scope, data: payload.data }, { versions: 0 })[0]!.data as Record<string, string | null>;
    return {
      scope: payload.scope, plan: payload.data.plan, version: r.version, currency: 'USD', seat: d.seat!, fixedFee: d.fixedFee!, includedUsage: d.includedUsage!, usageCap: d.usageCap ?? null,
      minimum: d.minimum ?? null, effectiveFrom: d.effectiveFrom!, publishedAt: r.events[0]?.occurredAt ?? new Date().toISOString(), position: r.position,
    };
  }

  @MessagePattern('cmd.billing.close_period')
  async closePeriod(body: unknown) {
    const { meta, payload } = parseOrThrow(invoiceRpc.closePeriod.request, body, 'period close');
    const tenantId = payload.tenantId.toLowerCase();
    const r = await this.draft(tenantId, payload.data.period, meta);
    const invoiceId = r.state.open[payload.data.period]!;
    return { invoice: await this.applied(tenantId, invoiceId, r.position), created: r.events.length > 0, position: r.position };
  }

  @MessagePattern('cmd.billing.finalize_invoice')
  async finalize(body: unknown) {
    const { meta, payload } = parseOrThrow(invoiceRpc.finalizeInvoice.request, body, 'finalization');
    const tenantId = payload.tenantId.toLowerCase();
    const r = await this.finalizeNow(tenantId, payload.invoiceId, meta);
    return { invoice: await this.applied(tenantId, payload.invoiceId, r.position), position: r.position };
  }

  @MessagePattern('cmd.billing.void_invoice')
  async voidInvoice(body: unknown) {
    const { meta, payload } = parseOrThrow(invoiceRpc.voidInvoice.request, body, 'void');
    const tenantId = payload.tenantId.toLowerCase();
    const r = await this.decideBook(tenantId, { type: 'void', invoiceId: payload.invoiceId, reason: payload.data.reason }, meta);
    return { invoice: await this.applied(tenantId, payload.invoiceId, r.position), position: r.position };
  }

  // ---- queries ----

  @MessagePattern('qry.billing.plan_prices')
  async listPlanPrices(body: unknown): Promise<{ items: PlanPrice[] }> {
    const q = parseOrThrow(invoiceRpc.planPrices.request, body, 'plan prices');
    if (q.consistentWith !== undefined) await this.usageRunner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const scopes = q.scope === 'platform' ? ['platform'] : [q.scope.toLowerCase(), 'platform'];
    const rows: PlanPriceRow[] = await inTenant(this.ds, ALL_TENANTS, (m) => m.query(`SELECT * FROM plan_prices WHERE scope = ANY($1) ORDER BY scope = 'platform', plan, version`, [scopes]));
    return { items: rows.map(toPlanPrice) };
  }

  @MessagePattern('qry.billing.seats')
  async seats(body: unknown) {
    const q = parseOrThrow(invoiceRpc.seats.request, body, 'seats');
    const tenantId = q.tenantId.toLowerCase();
    const a = await this.account(tenantId);
    const { start, end, days } = monthOf(DateTime.now().setZone(a.time_zone).toFormat('yyyy-MM'), a.time_zone);
    const [used]: { n: number }[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT count(*)::int AS n FROM seat_intervals WHERE tenant_id = $1 AND active_to IS NULL`, [tenantId]));
    return {
      tenantId, allowed: a.max_users, used: used?.n ?? 0, periodStart: start.toUTC().toISO()!, periodEnd: end.toUTC().toISO()!,
      seatDays: await this.seatDays(tenantId, start.toJSDate(), new Date(Math.min(Date.now(), end.toMillis())), a.time_zone), daysInPeriod: days,
    };
  }

  @MessagePattern('qry.billing.invoices')
  async list(body: unknown): Promise<{ items: Invoice[] }> {
    const q = parseOrThrow(invoiceRpc.invoices.request, body, 'invoices');
    if (q.consistentWith !== undefined) await this.invoicesRunner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const tenantId = q.tenantId.toLowerCase();
    const rows: InvoiceRow[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT * FROM invoices WHERE tenant_id = $1 ORDER BY period DESC, created_at DESC`, [tenantId]));
    return { items: await Promise.all(rows.map((r) => this.view(r))) };
  }

  @MessagePattern('qry.billing.invoice')
  async get(body: unknown): Promise<Invoice> {
    const q = parseOrThrow(invoiceRpc.invoice.request, body, 'invoice');
    if (q.consistentWith !== undefined) await this.invoicesRunner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    return this.view(await this.row(q.tenantId.toLowerCase(), q.invoiceId));
  }

  @MessagePattern('qry.billing.upcoming_invoice')
  async upcoming(body: unknown) {
    const q = parseOrThrow(invoiceRpc.upcomingInvoice.request, body, 'upcoming invoice');
    const tenantId = q.tenantId.toLowerCase();
    const a = await this.account(tenantId);
    const period = DateTime.now().setZone(a.time_zone).toFormat('yyyy-MM');
    const zone = validZone(a.time_zone);
    const { start, end, days } = monthOf(period, zone);
    const computed = withoutUnpriced(await this.compute(tenantId, { start, end, days, zone }, null, Date.now()));
    return {
      id: null, tenantId, number: null, period, periodStart: start.toUTC().toISO()!, periodEnd: end.toUTC().toISO()!, timeZone: a.time_zone, status: 'draft' as const, ...computed,
      finalizesAt: new Date(end.toMillis() + this.config.KEEL_INVOICE_GRACE_SECONDS * 1_000).toISOString(), finalizedAt: null, voidedAt: null, voidReason: null, creditNote: null,
      createdAt: new Date().toISOString(), position: null,
    };
  }
}
