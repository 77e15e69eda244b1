import { createHmac } from 'node:crypto';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import Redis from 'ioredis';
import { Counter } from 'prom-client';
import { DataSource } from 'typeorm';
import { auditRpc, EventEnvelope, nameBasedUuid, ReplayPage, WEBHOOK_DELIVERY_AGGREGATE, webhookEventTypes as W } from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { callRpc, decodeJson, eventsOf, EventStore, InjectConfig, InjectMessaging, KEEL_LOGGER, Messaging, RpcClient } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { OutboundError, SafeFetch } from '@keel/outbound';
import { repeating } from '../periodic';
import { WebhookHandlers, webhookSecret } from './webhook.handlers';
import { deliveryAggregateId } from './webhooks.projection';

const POLL_MS = 250;
const BATCH = 200;
/** Attempts in flight in one process, and for one subscription (a slow receiver holds at most that many). */
const CONCURRENCY = 32;
const PER_SUBSCRIPTION = 4;
/** How long an attempt that finished stays claimed: until the webhooks projection has applied its outcome. */
const DONE_CLAIM_MS = 24 * 3_600_000;
const MAX_DELAY_MS = 6 * 3_600_000;

const deliveriesTotal = new Counter({ name: 'keel_webhook_attempts_total', help: 'Webhook delivery attempts, by outcome', labelNames: ['outcome'], registers: [metricsRegistry] });

interface Due {
  tenant_id: string;
  webhook_id: string;
  event_id: string;
  id: string;
  event_type: string;
  event_position: string;
  attempts: number;
  attempts_before: number;
  url: string;
  include_personal: boolean;
  secret_version: number;
  previous_secret_until: Date | null;
  consecutive_failures: number;
}

/** `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under a `whsec_` secret (Standard Webhooks). */
export function signature(secret: string, id: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

/** The delay before attempt `n + 1` after `n` failed ones: base × 3^(n−1), at most 6 hours, ±10 %. */
export function retryDelay(baseMs: number, failed: number): number {
  const d = Math.min(MAX_DELAY_MS, baseMs * 3 ** Math.min(failed - 1, 30));
  return Math.round(d * (0.9 + Math.random() * 0.2));
}

/**
 * Sends the deliveries the webhooks projection made: each due one is claimed for its next attempt
 * number in Redis (one replica makes each attempt), read from the log, signed and POSTed; the
 * outcome is an event (`billing.webhook_delivery.attempted`), which moves the row on. A crash
 * after the POST and before that event makes the attempt again: the receiver dedupes by
 * `webhook-id`. A subscription failing `KEEL_WEBHOOK_DISABLE_AFTER` attempts in a row is disabled.
 */
@Injectable()
export class WebhookDispatcher implements OnModuleInit, OnModuleDestroy {
  private loop?: { stop(): void };
  private stopping = false;
  /** Attempts in flight here, by delivery. */
  private readonly running = new Map<string, { webhook: string; done: Promise<void> }>();
  private readonly http: SafeFetch;

  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly store: EventStore,
    @InjectMessaging() private readonly m: Messaging,
    private readonly rpc: RpcClient,
    private readonly redis: Redis,
    private readonly webhooks: WebhookHandlers,
    @InjectConfig() private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {
    this.http = new SafeFetch({
      allowHttpLoopback: config.KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK,
      loopbackSetting: 'KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK',
      timeoutMs: config.KEEL_WEBHOOK_TIMEOUT_MS,
      maxBytes: 64 * 1024,
      maxRedirects: 0,
    });
  }

  onModuleInit(): void {
    this.loop = repeating('webhook dispatch', POLL_MS, () => this.tick(), this.logger);
  }

  async onModuleDestroy(): Promise<void> {
    this.stopping = true;
    this.loop?.stop();
    // Attempts under way finish and record their outcome (an attempt cut off would be made again).
    await Promise.allSettled([...this.running.values()].map((a) => a.done));
    await this.http.close();
  }

  private async tick(): Promise<void> {
    if (!this.config.KEEL_KEK || this.stopping) return;
    const due: Due[] = await inTenant(this.ds, ALL_TENANTS, (q) =>
      q.query(
        // The earliest due of each subscription (a few each): one receiver's backlog does not fill the batch.
        `SELECT * FROM (
           SELECT d.tenant_id, d.webhook_id, d.event_id, d.id, d.event_type, d.event_position, d.attempts, d.attempts_before, d.next_attempt_at,
                  s.url, s.include_personal, s.secret_version, s.previous_secret_until, s.consecutive_failures,
                  row_number() OVER (PARTITION BY d.tenant_id, d.webhook_id ORDER BY d.next_attempt_at) AS nth
             FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.tenant_id = d.tenant_id AND s.id = d.webhook_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND s.status = 'active') due
          WHERE nth <= $2 ORDER BY next_attempt_at LIMIT $1`,
        [BATCH, PER_SUBSCRIPTION * 2],
      ),
    );
    // Started, not awaited: a receiver slow to answer holds its own slots, not the next tick.
    const perSubscription = new Map<string, number>();
    for (const a of this.running.values()) perSubscription.set(a.webhook, (perSubscription.get(a.webhook) ?? 0) + 1);
    for (const d of due) {
      if (this.running.size >= CONCURRENCY || this.stopping) break;
      const local = `${d.tenant_id}:${d.id}`;
      const n = perSubscription.get(d.webhook_id) ?? 0;
      if (this.running.has(local) || n >= PER_SUBSCRIPTION) continue;
      perSubscription.set(d.webhook_id, n + 1);
      const done = this.attempt(d).finally(() => this.running.delete(local));
      this.running.set(local, { webhook: d.webhook_id, done });
    }
  }

  private async attempt(d: Due): Promise<void> {
    const n = d.attempts + 1;
    const key = `${this.config.KEEL_REDIS_PREFIX}webhook:attempt:${d.tenant_id}:${d.id}:${n}`;
    if ((await this.redis.set(key, 'sending', 'PX', this.config.KEEL_WEBHOOK_TIMEOUT_MS + 30_000, 'NX').catch(() => null)) !== 'OK') return;
    try {
      const event = await this.event(Number(d.event_position), d.event_id);
      const started = Date.now();
      let outcome: { ok: boolean; status?: number; error?: string };
      if (!event) {
        outcome = { ok: false, error: 'the event is no longer in the log or the ledger' };
      } else {
        const opened = d.include_personal && this.m.personalData ? (await this.m.personalData.open([event], { actor: true }))[0]! : event;
        outcome = await this.post(d, opened);
      }
      const failedInSeries = n - d.attempts_before;
      const next = outcome.ok || failedInSeries >= this.config.KEEL_WEBHOOK_MAX_ATTEMPTS ? null : new Date(Date.now() + retryDelay(this.config.KEEL_WEBHOOK_RETRY_BASE_MS, failedInSeries)).toISOString();
      deliveriesTotal.inc({ outcome: outcome.ok ? 'succeeded' : 'failed' });
      await this.store.appendFacts([
        {
          id: nameBasedUuid(`keel.webhook.attempt\n${d.tenant_id}\n${d.id}\n${n}`),
          type: W.attempted,
          schemaVersion: 1,
          tenantId: d.tenant_id,
          aggregateType: WEBHOOK_DELIVERY_AGGREGATE,
          aggregateId: deliveryAggregateId(d.id),
          aggregateVersion: n,
          occurredAt: new Date().toISOString(),
          actor: { kind: 'system', id: 'billing.webhooks' },
          correlationId: d.event_id,
          data: {
            webhookId: d.webhook_id,
            deliveryId: d.id,
            eventId: d.event_id,
            attempt: n,
            outcome: outcome.ok ? 'succeeded' : 'failed',
            ...(outcome.status === undefined ? {} : { status: outcome.status }),
            ...(outcome.error === undefined ? {} : { error: outcome.error.slice(0, 500) }),
            durationMs: Date.now() - started,
            nextAttemptAt: next,
          },
        },
      ]);
      await this.redis.set(key, 'done', 'PX', DONE_CLAIM_MS);
      if (!outcome.ok && d.consecutive_failures + 1 >= this.config.KEEL_WEBHOOK_DISABLE_AFTER) {
        await this.webhooks.handler
          .handle(
            { tenantId: d.tenant_id, aggregateId: d.webhook_id },
            { type: 'disable', reason: `${d.consecutive_failures + 1} delivery attempts in a row failed (last: ${outcome.error ?? `HTTP ${outcome.status}`})`, consecutiveFailures: d.consecutive_failures + 1 },
            { actor: { kind: 'system', id: 'billing.webhooks' }, correlationId: d.event_id },
          )
          .catch((error) => this.logger.warn({ err: error, webhookId: d.webhook_id }, 'could not disable a failing webhook subscription'));
      }
    } catch (error) {
      // The claim lapses: the attempt is made again (by any replica) once it has.
      this.logger.warn({ err: error, deliveryId: d.id }, 'webhook attempt not recorded; it will be made again');
    }
  }

  private async post(d: Due, event: EventEnvelope): Promise<{ ok: boolean; status?: number; error?: string }> {
    const kek = this.config.KEEL_KEK!;
    const body = JSON.stringify({ type: event.type, timestamp: event.occurredAt, position: Number(d.event_position), data: event });
    const timestamp = Math.floor(Date.now() / 1000);
    const signatures = [signature(webhookSecret(kek, d.tenant_id, d.webhook_id, d.secret_version), d.id, timestamp, body)];
    if (d.secret_version > 1 && d.previous_secret_until && d.previous_secret_until.getTime() > Date.now()) {
      signatures.push(signature(webhookSecret(kek, d.tenant_id, d.webhook_id, d.secret_version - 1), d.id, timestamp, body));
    }
    try {
      const res = await this.http.fetch(d.url, {
        method: 'POST',
        ignoreBody: true,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'Keel-Webhooks/1',
          'webhook-id': d.id,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signatures.join(' '),
        },
        body,
      });
      return res.ok ? { ok: true, status: res.status } : { ok: false, status: res.status, error: `HTTP ${res.status}` };
    } catch (error) {
      return { ok: false, error: error instanceof OutboundError ? error.message : 'the request failed' };
    }
  }

  /** The event as the log holds it (personal data sealed): from the stream, or from the ledger when the stream no longer has it. */
  private async event(position: number, eventId: string): Promise<EventEnvelope | undefined> {
    const pick = (events: EventEnvelope[]) => events.find((e) => e.id.toLowerCase() === eventId.toLowerCase());
    const stored = await this.m.jsm.streams.getMessage(this.m.stream, { seq: position }).catch(() => null);
    if (stored) return pick(eventsOf(decodeJson(stored.data)));
    const page = (await callRpc(this.rpc, auditRpc.replay, { afterSeq: position - 1, limit: 1 })) as unknown as ReplayPage;
    return pick(page.events.filter((e) => e.position === position).map((e) => e.event as EventEnvelope));
  }
}
