import { EntityManager } from 'typeorm';
import { eventTypeMatches, nameBasedUuid, PositionedEvent, isUuid, webhookEventTypes as W } from '@keel/contracts';
import { Projection } from '@keel/projections';
import { WEBHOOK_TABLES } from '../database/migrations/1700000000005-webhooks';

/** The runner token of the webhooks projection (the service's third). */
export const WEBHOOKS_RUNNER = Symbol('BILLING_WEBHOOKS_RUNNER');

/** The aggregate of a delivery's own events (its attempts, a redelivery asked for). */
export const deliveryAggregateId = (deliveryId: string) => nameBasedUuid(`keel.webhook.delivery\n${deliveryId}`);

/** The `webhook-id` of one event's delivery to one subscription: the same for every attempt and redelivery. */
export const deliveryIdOf = (webhookId: string, eventId: string) => `msg_${nameBasedUuid(`keel.webhook.delivery\n${webhookId.toLowerCase()}\n${eventId.toLowerCase()}`).replace(/-/g, '')}`;

type Active = { id: string; eventTypes: string[] };
type Attempted = { webhookId: string; deliveryId: string; attempt: number; outcome: 'succeeded' | 'failed'; status?: number; error?: string; nextAttemptAt: string | null };

/**
 * Subscriptions (from their events) and deliveries: every event of a tenant that an active
 * subscription of that tenant matches gets a delivery row, made in the transaction that moves the
 * checkpoint (the outbox the dispatcher sends from); the attempts' outcomes, themselves events,
 * move the rows on. It reads the whole log (a subscription may name any event type of its tenant).
 */
export class WebhooksProjection implements Projection {
  readonly name = 'webhooks';
  readonly contexts: string[] = [];
  readonly tables = WEBHOOK_TABLES.map((t) => t.name);

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<void> {
    const tenants = [...new Set(events.map((e) => e.event.tenantId.toLowerCase()).filter((t) => isUuid(t)))];
    const active = new Map<string, Active[]>(tenants.map((t) => [t, []]));
    if (tenants.length) {
      const rows: { tenant_id: string; id: string; event_types: string[] }[] = await m.query(
        `SELECT tenant_id, id, event_types FROM webhook_subscriptions WHERE status = 'active' AND tenant_id = ANY($1::uuid[])`,
        [tenants],
      );
      for (const r of rows) active.get(r.tenant_id)!.push({ id: r.id, eventTypes: r.event_types });
    }
    const reload = async (tenantId: string) => {
      const rows: { id: string; event_types: string[] }[] = await m.query(`SELECT id, event_types FROM webhook_subscriptions WHERE status = 'active' AND tenant_id = $1`, [tenantId]);
      active.set(tenantId, rows.map((r) => ({ id: r.id, eventTypes: r.event_types })));
    };
    // Deliveries are inserted in bulk, flushed before anything that changes a subscription or a delivery.
    let pending: { tenant: string; webhook: string; eventId: string; type: string; position: number; at: string }[] = [];
    const flush = async () => {
      if (!pending.length) return;
      const p = pending;
      pending = [];
      await m.query(
        `INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, id, event_type, event_position, status, attempts, next_attempt_at, created_at)
         SELECT t, w, e, i, ty, pos, 'pending', 0, at, at
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::timestamptz[]) AS x(t, w, e, i, ty, pos, at)
         ON CONFLICT DO NOTHING`,
        [p.map((d) => d.tenant), p.map((d) => d.webhook), p.map((d) => d.eventId), p.map((d) => deliveryIdOf(d.webhook, d.eventId)), p.map((d) => d.type), p.map((d) => d.position), p.map((d) => d.at)],
      );
    };

    for (const { position, event: e } of events) {
      const tenantId = e.tenantId.toLowerCase();
      const d = e.data as Record<string, unknown>;
      switch (e.type) {
        case W.created:
          await flush();
          await m.query(
            `INSERT INTO webhook_subscriptions (tenant_id, id, url, event_types, description, include_personal, status, version, position, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $9) ON CONFLICT DO NOTHING`,
            [tenantId, e.aggregateId, d.url, JSON.stringify(d.eventTypes), d.description, d.includePersonalData, e.aggregateVersion, position, e.occurredAt],
          );
          await reload(tenantId);
          continue;
        case W.updated: {
          await flush();
          const c = (d.changes ?? {}) as Record<string, unknown>;
          await m.query(
            `UPDATE webhook_subscriptions SET url = coalesce($3, url), event_types = coalesce($4::jsonb, event_types), description = coalesce($5, description),
               include_personal = coalesce($6, include_personal), version = $7, updated_at = $8 WHERE tenant_id = $1 AND id = $2`,
            [tenantId, e.aggregateId, c.url ?? null, c.eventTypes === undefined ? null : JSON.stringify(c.eventTypes), c.description ?? null, c.includePersonalData ?? null, e.aggregateVersion, e.occurredAt],
          );
          await reload(tenantId);
          continue;
        }
        case W.disabled:
        case W.enabled:
          await flush();
          await m.query(
            `UPDATE webhook_subscriptions SET status = $3, disabled_reason = $4, consecutive_failures = CASE WHEN $3 = 'active' THEN 0 ELSE consecutive_failures END,
               version = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2`,
            [tenantId, e.aggregateId, e.type === W.enabled ? 'active' : 'disabled', e.type === W.enabled ? null : d.reason, e.aggregateVersion, e.occurredAt],
          );
          // Re-enabled: what was waiting is due now.
          if (e.type === W.enabled) {
            await m.query(`UPDATE webhook_deliveries SET next_attempt_at = least(next_attempt_at, $3) WHERE tenant_id = $1 AND webhook_id = $2 AND status = 'pending'`, [tenantId, e.aggregateId, e.occurredAt]);
          }
          await reload(tenantId);
          continue;
        case W.secretRotated:
          await m.query(
            `UPDATE webhook_subscriptions SET secret_version = $3, previous_secret_until = $4, version = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2`,
            [tenantId, e.aggregateId, d.secretVersion, d.previousSecretValidUntil, e.aggregateVersion, e.occurredAt],
          );
          continue;
        case W.deleted:
          await flush();
          await m.query(`DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2`, [tenantId, e.aggregateId]);
          await m.query(`DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND id = $2`, [tenantId, e.aggregateId]);
          await reload(tenantId);
          continue;
        case W.attempted: {
          await flush();
          const a = d as unknown as Attempted;
          // An attempt at or below the count applied already (a copy) changes nothing.
          await m.query(
            `WITH moved AS (
               UPDATE webhook_deliveries SET attempts = $4, last_attempt_at = $5, last_status = $6, last_error = $7, next_attempt_at = $8,
                 status = CASE WHEN $9 = 'succeeded' THEN 'succeeded' WHEN $8::timestamptz IS NULL THEN 'failed' ELSE 'pending' END
               WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3 AND attempts < $4 RETURNING 1)
             UPDATE webhook_subscriptions SET consecutive_failures = CASE WHEN $9 = 'succeeded' THEN 0 ELSE consecutive_failures + 1 END
              WHERE tenant_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM moved)`,
            [tenantId, a.webhookId, a.deliveryId, a.attempt, e.occurredAt, a.status ?? null, a.error ?? null, a.nextAttemptAt, a.outcome],
          );
          continue;
        }
        case W.redeliveryRequested: {
          await flush();
          const r = d as { webhookId: string; deliveryId: string };
          await m.query(`UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, attempts_before = attempts WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3`, [
            tenantId, r.webhookId, r.deliveryId, e.occurredAt,
          ]);
          continue;
        }
      }
      for (const s of active.get(tenantId) ?? []) {
        if (eventTypeMatches(s.eventTypes, e.type)) pending.push({ tenant: tenantId, webhook: s.id, eventId: e.id, type: e.type, position, at: e.occurredAt });
      }
    }
    await flush();
  }
}
