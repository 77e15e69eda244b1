import { EntityManager } from 'typeorm';
import { INVOICE_BOOK_AGGREGATE, invoiceEventTypes as I, PositionedEvent } from '@keel/contracts';
import { Projection } from '@keel/projections';
import { INVOICE_TABLES } from '../database/migrations/1700000000006-invoices';

/** The runner token of the invoices projection. */
export const INVOICES_RUNNER = Symbol('BILLING_INVOICES_RUNNER');

/** Invoices as each tenant's invoice book has them: drafted, finalized (lines, total, number), voided (credit note). */
export class InvoicesProjection implements Projection {
  readonly name = 'invoices';
  readonly contexts = ['billing'];
  readonly aggregateType = INVOICE_BOOK_AGGREGATE;
  readonly tables = INVOICE_TABLES.map((t) => t.name);

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<void> {
    for (const { position, event } of events) {
      const tenantId = event.tenantId.toLowerCase();
      const d = event.data as Record<string, unknown>;
      if (event.type === I.drafted) {
        await m.query(
          `INSERT INTO invoices (tenant_id, id, period, period_start, period_end, time_zone, status, plan, finalizes_at, created_at, position)
           VALUES ($1, $2, $3, $4, $5, $6, 'draft', $7, $8, $9, $10) ON CONFLICT DO NOTHING`,
          [tenantId, d.invoiceId, d.period, d.periodStart, d.periodEnd, d.timeZone, typeof d.plan === 'string' ? d.plan : null, d.finalizesAt, event.occurredAt, position],
        );
      } else if (event.type === I.finalized) {
        await m.query(
          `UPDATE invoices SET status = 'finalized', number = $3, currency = $4, plan = $5, plan_price = $6, lines = $7, total = $8, finalized_at = $9, position = $10
            WHERE tenant_id = $1 AND id = $2 AND status = 'draft'`,
          [tenantId, d.invoiceId, d.number, d.currency, d.plan, JSON.stringify(d.planPrice), JSON.stringify(d.lines), d.total, event.occurredAt, position],
        );
      } else if (event.type === I.voided) {
        await m.query(
          `UPDATE invoices SET status = 'void', voided_at = $3, void_reason = $4, credit_note = $5, position = $6 WHERE tenant_id = $1 AND id = $2 AND status = 'finalized'`,
          [tenantId, d.invoiceId, event.occurredAt, d.reason, JSON.stringify(d.creditNote), position],
        );
      }
    }
  }
}
