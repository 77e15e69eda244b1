import { createHmac } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import {
  BILLING_CONTEXT,
  KeelError,
  nameBasedUuid,
  newEventId,
  parseOrThrow,
  permissions as P,
  Webhook,
  WebhookBody,
  WebhookDelivery,
  WEBHOOK_AGGREGATE,
  WEBHOOK_DELIVERY_AGGREGATE,
  webhookEventTypes as W,
  webhookRpc,
} from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { inTenant } from '@keel/database';
import { aggregateIdFor, CommandHandler, Decider } from '@keel/event-sourcing';
import { EventStore, InjectConfig, MessagePattern } from '@keel/messaging';
import { SafeFetch } from '@keel/outbound';
import { ProjectionRunner } from '@keel/projections';
import { deliveryAggregateId, WEBHOOKS_RUNNER } from './webhooks.projection';

/** How long a rotated-out secret still signs deliveries (beside the new one). */
export const PREVIOUS_SECRET_HOURS = 24;

type Settings = Pick<WebhookBody, 'url' | 'eventTypes' | 'description' | 'includePersonalData'>;
export type WebhookState =
  | { status: 'none' }
  | { status: 'active' | 'disabled' | 'deleted'; data: Settings; disabledReason: string | null; secretVersion: number; createdAt: string; updatedAt: string };
export type WebhookCommand =
  | { type: 'create'; data: Settings }
  | { type: 'update'; data: Partial<Settings> & { enabled?: boolean }; permissions: '*' | string[] }
  | { type: 'disable'; reason: string; consecutiveFailures?: number }
  | { type: 'rotate'; now: number }
  | { type: 'delete' };
type WebhookEvent = { type: string; data: Record<string, unknown> };

const gone = () => new KeelError('not_found', 'No such webhook subscription in this tenant.');

/** Each event type's context needs its read permission: `billing.*` usage or budgets, `tenant.*` the tenant, anything else (or `*`) the audit trail's. */
function refuseUnreadable(patterns: readonly string[], permissions: '*' | readonly string[]): void {
  const holds = (p: string) => permissions === '*' || permissions.includes(p);
  for (const pattern of patterns) {
    const context = pattern === '*' ? '*' : pattern.split('.')[0]!;
    const needed = context === 'billing' ? [P.usageRead, P.budgetsRead] : context === 'tenant' ? [P.tenantsRead] : [P.auditRead];
    if (!needed.some(holds)) throw new KeelError('forbidden', `Subscribing to ${pattern} needs ${needed.join(' or ')}, which you do not hold.`);
  }
}

export const webhookDecider: Decider<WebhookState, WebhookCommand, WebhookEvent> = {
  initialState: () => ({ status: 'none' }),
  evolve(s, e) {
    const d = e.data as Record<string, unknown>;
    if (e.type === W.created) {
      return { status: 'active', data: d as unknown as Settings, disabledReason: null, secretVersion: 1, createdAt: e.occurredAt, updatedAt: e.occurredAt };
    }
    if (s.status === 'none') return s;
    const at = { updatedAt: e.occurredAt };
    switch (e.type) {
      case W.updated:
        return { ...s, ...at, data: { ...s.data, ...(d.changes as Partial<Settings>) } };
      case W.disabled:
        return { ...s, ...at, status: 'disabled', disabledReason: d.reason as string };
      case W.enabled:
        return { ...s, ...at, status: 'active', disabledReason: null };
      case W.secretRotated:
        return { ...s, ...at, secretVersion: d.secretVersion as number };
      case W.deleted:
        return { ...s, ...at, status: 'deleted' };
      default:
        return s;
    }
  },
  decide(c, s) {
    if (c.type === 'create') {
      if (s.status !== 'none') throw new KeelError('conflict', 'This webhook subscription exists already.');
      return [{ type: W.created, data: { ...c.data } }];
    }
    if (s.status === 'none' || s.status === 'deleted') throw gone();
    switch (c.type) {
      case 'delete':
        return [{ type: W.deleted, data: {} }];
      case 'rotate':
        return [{ type: W.secretRotated, data: { secretVersion: s.secretVersion + 1, previousSecretValidUntil: new Date(c.now + PREVIOUS_SECRET_HOURS * 3_600_000).toISOString() } }];
      case 'disable':
        return s.status === 'disabled' ? [] : [{ type: W.disabled, data: { reason: c.reason, ...(c.consecutiveFailures === undefined ? {} : { consecutiveFailures: c.consecutiveFailures }) } }];
      case 'update': {
        const { enabled, ...settings } = c.data;
        const changes = Object.fromEntries(Object.entries(settings).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify((s.data as Record<string, unknown>)[k])));
        // Who sends a subscription elsewhere, or changes what it sends, may read all it sends.
        const mayReadPersonal = c.permissions === '*' || c.permissions.includes(P.usersExportPersonalData);
        if ('url' in changes || 'eventTypes' in changes) refuseUnreadable((changes.eventTypes as string[] | undefined) ?? s.data.eventTypes, c.permissions);
        // Where personal data goes opened (before or after), only who may read it changes where, what or whether.
        const personal = s.data.includePersonalData || changes.includePersonalData === true;
        if (personal && !mayReadPersonal && ['url', 'eventTypes', 'includePersonalData'].some((k) => k in changes)) {
          throw new KeelError('forbidden', `This subscription delivers personal data opened: changing its url, event types or that needs ${P.usersExportPersonalData}, which you do not hold.`);
        }
        const out: WebhookEvent[] = Object.keys(changes).length ? [{ type: W.updated, data: { changes } }] : [];
        if (enabled === true && s.status === 'disabled') out.push({ type: W.enabled, data: {} });
        if (enabled === false && s.status === 'active') out.push({ type: W.disabled, data: { reason: 'paused by a person' } });
        return out;
      }
    }
  },
};

/**
 * A subscription's signing secret (`whsec_` and 32 bytes, base64, the Standard Webhooks form), made
 * from the key-encryption key, the subscription and the secret's version: nothing secret is stored,
 * a rotation is a new version, and every replica signs alike.
 */
export function webhookSecret(kek: string, tenantId: string, webhookId: string, version: number): string {
  const key = createHmac('sha256', Buffer.from(kek, 'base64')).update(`keel.webhook-secret\n${tenantId.toLowerCase()}\n${webhookId.toLowerCase()}\n${version}`).digest();
  return `whsec_${key.toString('base64')}`;
}

interface SubscriptionRow {
  tenant_id: string;
  id: string;
  url: string;
  event_types: string[];
  description: string;
  include_personal: boolean;
  status: 'active' | 'disabled';
  disabled_reason: string | null;
  consecutive_failures: number;
  secret_version: number;
  version: number;
  created_at: Date;
  updated_at: Date;
}

const toWebhook = (r: SubscriptionRow): Webhook => ({
  id: r.id,
  tenantId: r.tenant_id,
  url: r.url,
  eventTypes: r.event_types,
  description: r.description,
  includePersonalData: r.include_personal,
  status: r.status,
  disabledReason: r.disabled_reason,
  consecutiveFailures: r.consecutive_failures,
  secretVersion: r.secret_version,
  version: r.version,
  createdAt: r.created_at.toISOString(),
  updatedAt: r.updated_at.toISOString(),
});

interface DeliveryRow {
  id: string;
  webhook_id: string;
  event_id: string;
  event_type: string;
  event_position: string;
  status: WebhookDelivery['status'];
  attempts: number;
  next_attempt_at: Date | null;
  last_attempt_at: Date | null;
  last_status: number | null;
  last_error: string | null;
  created_at: Date;
}

export const toDelivery = (r: DeliveryRow): WebhookDelivery => ({
  id: r.id,
  webhookId: r.webhook_id,
  eventId: r.event_id,
  eventType: r.event_type,
  eventPosition: Number(r.event_position),
  status: r.status,
  attempts: r.attempts,
  nextAttemptAt: r.status === 'pending' && r.next_attempt_at ? r.next_attempt_at.toISOString() : null,
  lastAttemptAt: r.last_attempt_at ? r.last_attempt_at.toISOString() : null,
  lastStatus: r.last_status,
  lastError: r.last_error,
  createdAt: r.created_at.toISOString(),
});

/** Webhook subscriptions (event-sourced, one aggregate each) and their deliveries (the webhooks projection). */
@Injectable()
export class WebhookHandlers {
  readonly handler: CommandHandler<WebhookState, WebhookCommand, WebhookEvent>;
  private readonly urls: SafeFetch;

  constructor(
    private readonly store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(WEBHOOKS_RUNNER) private readonly runner: ProjectionRunner,
    @InjectConfig() private readonly config: KeelConfig,
  ) {
    this.handler = new CommandHandler(store, { context: BILLING_CONTEXT, aggregateType: WEBHOOK_AGGREGATE, decider: webhookDecider });
    this.urls = new SafeFetch({ allowHttpLoopback: config.KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK, loopbackSetting: 'KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK' });
  }

  private kek(): string {
    if (!this.config.KEEL_KEK) throw new KeelError('service_unavailable', 'Webhooks need KEEL_KEK (their signing secrets are made from it).');
    return this.config.KEEL_KEK;
  }

  /**
   * The URL is checked when set (scheme, credentials, address literals); where its name points is
   * checked at each delivery. A subscription reads no more than its maker may: each event type's
   * context needs its read permission (`billing.*` usage or budgets, `tenant.*` the tenant, anything
   * else, or `*`, the audit trail's), and personal data opened needs the right to export it.
   */
  private checkSettings(data: Partial<Settings>, permissions: '*' | string[]): void {
    if (data.url !== undefined) {
      const problem = this.urls.urlProblem(data.url);
      if (problem) throw new KeelError('validation_failed', `url ${problem}`, [{ field: 'url', message: problem }]);
    }
    const holds = (p: string) => permissions === '*' || permissions.includes(p);
    refuseUnreadable(data.eventTypes ?? [], permissions);
    if (data.includePersonalData && !holds(P.usersExportPersonalData)) {
      throw new KeelError('forbidden', `Delivering personal data opened needs ${P.usersExportPersonalData}, which you do not hold; leave includePersonalData false and it stays sealed.`);
    }
  }

  private view(tenantId: string, id: string, s: WebhookState, version: number, failures = 0): Webhook {
    if (s.status === 'none' || s.status === 'deleted') throw gone();
    return {
      id, tenantId, url: s.data.url, eventTypes: s.data.eventTypes, description: s.data.description, includePersonalData: s.data.includePersonalData,
      status: s.status, disabledReason: s.disabledReason, consecutiveFailures: failures, secretVersion: s.secretVersion, version,
      createdAt: s.createdAt, updatedAt: s.updatedAt,
    };
  }

  private async failures(tenantId: string, id: string): Promise<number> {
    const [row] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT consecutive_failures FROM webhook_subscriptions WHERE tenant_id = $1 AND id = $2`, [tenantId, id]));
    return row?.consecutive_failures ?? 0;
  }

  @MessagePattern('cmd.billing.create_webhook')
  async create(body: unknown) {
    const { meta, payload } = parseOrThrow(webhookRpc.createWebhook.request, body, 'webhook subscription');
    const tenantId = payload.tenantId.toLowerCase();
    this.checkSettings(payload.data, meta.permissions);
    const kek = this.kek();
    const { permissions: _p, ...cmdMeta } = meta;
    const id = meta.commandId ? aggregateIdFor(meta.commandId, WEBHOOK_AGGREGATE, tenantId) : newEventId();
    const r = await this.handler.handle({ tenantId, aggregateId: id }, { type: 'create', data: payload.data }, cmdMeta, !meta.commandId);
    const webhook = this.view(tenantId, id, r.state, r.version);
    return { webhook, secret: webhookSecret(kek, tenantId, id, webhook.secretVersion), version: r.version, position: r.position };
  }

  @MessagePattern('cmd.billing.update_webhook')
  async update(body: unknown) {
    const { meta, payload } = parseOrThrow(webhookRpc.updateWebhook.request, body, 'webhook change');
    const tenantId = payload.tenantId.toLowerCase();
    this.checkSettings(payload.data, meta.permissions);
    const { permissions: _p, ...cmdMeta } = meta;
    const r = await this.handler.handle({ tenantId, aggregateId: payload.webhookId }, { type: 'update', data: payload.data, permissions: meta.permissions }, cmdMeta);
    const failures = payload.data.enabled === true ? 0 : await this.failures(tenantId, payload.webhookId);
    return { webhook: this.view(tenantId, payload.webhookId, r.state, r.version, failures), version: r.version, position: r.position };
  }

  @MessagePattern('cmd.billing.rotate_webhook_secret')
  async rotate(body: unknown) {
    const { meta, payload } = parseOrThrow(webhookRpc.rotateWebhookSecret.request, body, 'secret rotation');
    const tenantId = payload.tenantId.toLowerCase();
    const kek = this.kek();
    const r = await this.handler.handle({ tenantId, aggregateId: payload.webhookId }, { type: 'rotate', now: Date.now() }, meta);
    if (r.state.status === 'none' || r.state.status === 'deleted') throw gone();
    const rotated = r.events.find((e) => e.type === W.secretRotated)?.data as { previousSecretValidUntil: string } | undefined;
    return {
      secret: webhookSecret(kek, tenantId, payload.webhookId, r.state.secretVersion),
      previousSecretValidUntil: rotated?.previousSecretValidUntil ?? new Date(Date.parse(r.state.updatedAt) + PREVIOUS_SECRET_HOURS * 3_600_000).toISOString(),
      version: r.version,
      position: r.position,
    };
  }

  @MessagePattern('cmd.billing.delete_webhook')
  async remove(body: unknown) {
    const { meta, payload } = parseOrThrow(webhookRpc.deleteWebhook.request, body, 'webhook deletion');
    const r = await this.handler.handle({ tenantId: payload.tenantId.toLowerCase(), aggregateId: payload.webhookId }, { type: 'delete' }, meta);
    return { deleted: true as const, position: r.position };
  }

  @MessagePattern('cmd.billing.redeliver')
  async redeliver(body: unknown) {
    const { meta, payload } = parseOrThrow(webhookRpc.redeliver.request, body, 'redelivery');
    const tenantId = payload.tenantId.toLowerCase();
    const row = await this.delivery(tenantId, payload.webhookId, payload.deliveryId);
    const id = meta.commandId ? nameBasedUuid(`keel.webhook.redeliver\n${tenantId}\n${meta.commandId}`) : newEventId();
    const [position] = await this.store.appendFacts([
      {
        id, type: W.redeliveryRequested, schemaVersion: 1, tenantId, aggregateType: WEBHOOK_DELIVERY_AGGREGATE,
        aggregateId: deliveryAggregateId(row.id), aggregateVersion: 1, occurredAt: new Date().toISOString(),
        actor: meta.actor, correlationId: meta.correlationId, data: { webhookId: payload.webhookId.toLowerCase(), deliveryId: row.id },
      },
    ]);
    return { delivery: { ...toDelivery(row), status: 'pending' as const, nextAttemptAt: new Date().toISOString() }, position: position! };
  }

  private async delivery(tenantId: string, webhookId: string, deliveryId: string): Promise<DeliveryRow> {
    const [row]: DeliveryRow[] = await inTenant(this.ds, tenantId, (m) =>
      m.query(`SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3`, [tenantId, webhookId, deliveryId]),
    );
    if (!row) throw new KeelError('not_found', 'No such delivery of this webhook subscription.');
    return row;
  }

  private async consistent(position: number | undefined): Promise<void> {
    if (position !== undefined) await this.runner.waitFor(position, this.config.KEEL_CONSISTENCY_WAIT_MS);
  }

  @MessagePattern('qry.billing.webhooks')
  async list(body: unknown): Promise<{ items: Webhook[] }> {
    const q = parseOrThrow(webhookRpc.webhooks.request, body, 'webhook list');
    await this.consistent(q.consistentWith);
    const tenantId = q.tenantId.toLowerCase();
    const rows: SubscriptionRow[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 ORDER BY created_at, id`, [tenantId]));
    return { items: rows.map(toWebhook) };
  }

  @MessagePattern('qry.billing.webhook')
  async get(body: unknown): Promise<Webhook> {
    const q = parseOrThrow(webhookRpc.webhook.request, body, 'webhook');
    await this.consistent(q.consistentWith);
    const tenantId = q.tenantId.toLowerCase();
    const [row]: SubscriptionRow[] = await inTenant(this.ds, tenantId, (m) => m.query(`SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND id = $2`, [tenantId, q.webhookId]));
    if (!row) throw gone();
    return toWebhook(row);
  }

  @MessagePattern('qry.billing.webhook_deliveries')
  async deliveries(body: unknown): Promise<{ items: WebhookDelivery[] }> {
    const q = parseOrThrow(webhookRpc.deliveries.request, body, 'delivery list');
    await this.consistent(q.consistentWith);
    const tenantId = q.tenantId.toLowerCase();
    await this.get({ tenantId, webhookId: q.webhookId });
    const rows: DeliveryRow[] = await inTenant(this.ds, tenantId, (m) =>
      m.query(
        `SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND ($3::text IS NULL OR status = $3)
         ORDER BY event_position DESC, event_id LIMIT $4`,
        [tenantId, q.webhookId, q.status ?? null, q.limit],
      ),
    );
    return { items: rows.map(toDelivery) };
  }
}
