import { EntityManager } from 'typeorm';
import { authEventTypes as A, PositionedEvent, isUuid } from '@keel/contracts';
import { Projection } from '@keel/projections';
import { SEAT_TABLES } from '../database/migrations/1700000000006-invoices';

/** The runner token of the seats projection. */
export const SEATS_RUNNER = Symbol('BILLING_SEATS_RUNNER');

/**
 * When each user of each tenant was active, from auth's user events: made or enabled opens an
 * interval, disabled or erased closes it. A seat is a user active on a day; invoices count the
 * seat-days of their period (a user active any part of a day is a seat that day).
 */
export class SeatsProjection implements Projection {
  readonly name = 'seats';
  readonly contexts = ['auth'];
  readonly aggregateType = 'user';
  readonly tables = SEAT_TABLES.map((t) => t.name);

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<void> {
    for (const { event } of events) {
      const tenantId = event.tenantId.toLowerCase();
      if (!isUuid(tenantId) || !isUuid(event.aggregateId)) continue;
      const userId = event.aggregateId.toLowerCase();
      if (event.type === A.userCreated || event.type === A.userEnabled) {
        await m.query(
          `INSERT INTO seat_intervals (tenant_id, user_id, active_from)
           SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM seat_intervals WHERE tenant_id = $1 AND user_id = $2 AND active_to IS NULL)
           ON CONFLICT DO NOTHING`,
          [tenantId, userId, event.occurredAt],
        );
      } else if (event.type === A.userDisabled || event.type === A.userErased) {
        await m.query(`UPDATE seat_intervals SET active_to = greatest(active_from, $3) WHERE tenant_id = $1 AND user_id = $2 AND active_to IS NULL`, [tenantId, userId, event.occurredAt]);
      }
    }
  }
}
