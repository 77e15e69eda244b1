import { z } from 'zod';
import { command, commandRequest, consistentWithParam, isoTime, listOf, positionSchema, query, route, routeGroup } from './contract';
import { queryInteger } from './validation';
import { authMetaSchema } from './auth-shared';
import { permissions as P } from './permissions';
import { text } from './text';

/**
 * Webhooks (served by the billing service, declared here and merged into its contract): a tenant
 * subscribes an HTTPS endpoint to event types of its own; every matching event is delivered once
 * (retried with exponential back-off, a receiver dedupes by `webhook-id`), signed per the Standard
 * Webhooks scheme (https://www.standardwebhooks.com). See the README's "Webhooks" section.
 */
export const WEBHOOK_AGGREGATE = 'webhook';
export const WEBHOOK_DELIVERY_AGGREGATE = 'webhook_delivery';

/** `billing.budget_alert.threshold_crossed`, `billing.*` (all of billing), `auth.user.*`, or `*` (every event of the tenant). */
const EVENT_PATTERN = /^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,2}(\.\*)?)$/;
export const eventTypePatternSchema = text()
  .regex(EVENT_PATTERN, 'an event type (billing.budget_alert.threshold_crossed), a prefix ending in .* (billing.*), or *')
  .refine((p) => p.split('.').length <= 3 || !p.endsWith('.*'), 'a pattern ends in .* after at most two parts (billing.budget_alert.*)');

/**
 * Whether an event type is delivered to a subscription's patterns. The deliveries' own events are
 * never delivered (each delivery would make another one).
 */
export function eventTypeMatches(patterns: readonly string[], type: string): boolean {
  if (type.startsWith(`billing.${WEBHOOK_DELIVERY_AGGREGATE}.`)) return false;
  return patterns.some((p) => p === '*' || p === type || (p.endsWith('.*') && type.startsWith(p.slice(0, -1))));
}

export const webhookBodySchema = z
  .object({
    /** Where deliveries are POSTed: `https://` to a public address. */
    url: text().trim().min(1).max(2_000).refine((u) => URL.canParse(u), 'must be an absolute URL (https://…)'),
    eventTypes: z.array(eventTypePatternSchema).min(1, 'name at least one event type').max(50),
    description: text({ multiline: true }).max(500).default(''),
    /**
     * Deliver personal fields (names, emails, addresses) opened; otherwise they stay sealed as the
     * log holds them. Needs the caller to hold `users:export-personal-data`.
     */
    includePersonalData: z.boolean().default(false),
  })
  .strict();
export type WebhookBody = z.infer<typeof webhookBodySchema>;

export const webhookPatchSchema = z
  .object({
    url: webhookBodySchema.shape.url,
    eventTypes: webhookBodySchema.shape.eventTypes,
    description: text({ multiline: true }).max(500),
    includePersonalData: z.boolean(),
    /** `true` re-enables a subscription disabled after failures (its pending deliveries resume); `false` pauses it. */
    enabled: z.boolean(),
  })
  .partial()
  .strict()
  .refine((v) => Object.keys(v).length > 0, { message: 'name at least one field to change' });
export type WebhookPatch = z.infer<typeof webhookPatchSchema>;

export const webhookSchema = z
  .object({
    id: z.uuid(),
    tenantId: z.uuid(),
    url: text(),
    eventTypes: z.array(text()),
    description: text({ multiline: true }),
    includePersonalData: z.boolean(),
    status: z.enum(['active', 'disabled']),
    /** Why it is disabled (failures in a row, or paused by someone). */
    disabledReason: text({ multiline: true }).nullable(),
    /** Failed attempts since the last success. */
    consecutiveFailures: z.number().int(),
    secretVersion: z.number().int(),
    version: z.number().int(),
    createdAt: isoTime,
    updatedAt: isoTime,
  })
  .meta({ id: 'Webhook' });
export type Webhook = z.infer<typeof webhookSchema>;

/** The signing secret (`whsec_…`, Standard Webhooks), shown when made and when rotated, never again. */
const secretField = text().describe('The signing secret (whsec_…): shown once, keep it');
export const webhookCreatedSchema = z.object({ webhook: webhookSchema, secret: secretField, version: z.number().int(), position: positionSchema }).meta({ id: 'WebhookCreated' });
export const webhookAnswerSchema = z.object({ webhook: webhookSchema, version: z.number().int(), position: positionSchema }).meta({ id: 'WebhookCommandResult' });
export const secretRotatedSchema = z
  .object({
    secret: secretField,
    /** Until then deliveries are signed with the old secret too (a receiver may switch at leisure). */
    previousSecretValidUntil: isoTime,
    version: z.number().int(),
    position: positionSchema,
  })
  .meta({ id: 'WebhookSecretRotated' });

export const deliveryStatuses = ['pending', 'succeeded', 'failed'] as const;
export const webhookDeliverySchema = z
  .object({
    /** The `webhook-id` header: the same for every attempt and redelivery of one event to one subscription. */
    id: text(),
    webhookId: z.uuid(),
    eventId: z.uuid(),
    eventType: text(),
    eventPosition: positionSchema,
    /** pending: not delivered yet (due at `nextAttemptAt`); succeeded: a 2xx answer; failed: every attempt failed. */
    status: z.enum(deliveryStatuses),
    attempts: z.number().int(),
    nextAttemptAt: isoTime.nullable(),
    lastAttemptAt: isoTime.nullable(),
    /** The HTTP status of the last attempt (null when none was answered). */
    lastStatus: z.number().int().nullable(),
    lastError: text({ multiline: true }).nullable(),
    createdAt: isoTime,
  })
  .meta({ id: 'WebhookDelivery' });
export type WebhookDelivery = z.infer<typeof webhookDeliverySchema>;

export const webhookEventTypes = {
  created: 'billing.webhook.created',
  updated: 'billing.webhook.updated',
  disabled: 'billing.webhook.disabled',
  enabled: 'billing.webhook.enabled',
  secretRotated: 'billing.webhook.secret_rotated',
  deleted: 'billing.webhook.deleted',
  /** One attempt to deliver one event (a fact: the dispatcher's outcome). */
  attempted: 'billing.webhook_delivery.attempted',
  /** Someone asked for a delivery again (it is pending again, due now). */
  redeliveryRequested: 'billing.webhook_delivery.redelivery_requested',
} as const;

export const webhookEventSchemas = {
  [webhookEventTypes.created]: z.object({ url: text(), eventTypes: z.array(text()), description: text({ multiline: true }), includePersonalData: z.boolean() }),
  [webhookEventTypes.updated]: z.object({ changes: z.object({ url: text(), eventTypes: z.array(text()), description: text({ multiline: true }), includePersonalData: z.boolean() }).partial() }),
  [webhookEventTypes.disabled]: z.object({ reason: text({ multiline: true }), consecutiveFailures: z.number().int().optional() }),
  [webhookEventTypes.enabled]: z.object({}),
  [webhookEventTypes.secretRotated]: z.object({ secretVersion: z.number().int(), previousSecretValidUntil: isoTime }),
  [webhookEventTypes.deleted]: z.object({}),
  [webhookEventTypes.attempted]: z.object({
    webhookId: z.uuid(),
    deliveryId: text(),
    eventId: z.uuid(),
    attempt: z.number().int().min(1),
    outcome: z.enum(['succeeded', 'failed']),
    status: z.number().int().optional(),
    error: text({ multiline: true }).optional(),
    durationMs: z.number().int().min(0),
    /** When the next attempt is due; null after a success or the last attempt. */
    nextAttemptAt: isoTime.nullable(),
  }),
  [webhookEventTypes.redeliveryRequested]: z.object({ webhookId: z.uuid(), deliveryId: text() }),
};

const tenantScope = z.uuid();
const webhookRef = z.object({ tenantId: tenantScope, webhookId: z.uuid() });
/** Commands whose caller's permissions matter (personal data needs `users:export-personal-data`). */
const withPermissions = <D extends z.ZodType>(payload: D) => z.object({ meta: authMetaSchema, payload }).strict();

const BILLING = 'billing';
export const webhookRpc = {
  createWebhook: command(BILLING, 'create_webhook', {
    summary: 'Subscribe an endpoint to event types of the tenant',
    request: withPermissions(z.object({ tenantId: tenantScope, data: webhookBodySchema }).strict()),
    response: webhookCreatedSchema,
  }),
  updateWebhook: command(BILLING, 'update_webhook', {
    summary: "Change a subscription's URL, event types or personal-data setting; disable or re-enable it",
    request: withPermissions(webhookRef.extend({ data: webhookPatchSchema }).strict()),
    response: webhookAnswerSchema,
  }),
  rotateWebhookSecret: command(BILLING, 'rotate_webhook_secret', {
    summary: "Make a subscription's new signing secret (the old one keeps signing for 24 hours)",
    request: commandRequest(webhookRef.strict()),
    response: secretRotatedSchema,
  }),
  deleteWebhook: command(BILLING, 'delete_webhook', {
    summary: 'Delete a subscription (its pending deliveries are dropped)',
    request: commandRequest(webhookRef.strict()),
    response: z.object({ deleted: z.literal(true), position: positionSchema }),
  }),
  redeliver: command(BILLING, 'redeliver', {
    summary: 'Deliver an event again (same webhook-id: a receiver that has it ignores it)',
    request: commandRequest(webhookRef.extend({ deliveryId: text().min(1).max(200) }).strict()),
    response: z.object({ delivery: webhookDeliverySchema, position: positionSchema }),
  }),
  webhooks: query(BILLING, 'webhooks', {
    summary: "A tenant's webhook subscriptions",
    request: z.object({ tenantId: tenantScope, consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(webhookSchema),
  }),
  webhook: query(BILLING, 'webhook', {
    summary: 'One webhook subscription',
    request: webhookRef.extend({ consistentWith: z.number().int().min(0).optional() }).strict(),
    response: webhookSchema,
  }),
  deliveries: query(BILLING, 'webhook_deliveries', {
    summary: "A subscription's deliveries, newest first",
    request: webhookRef.extend({ status: z.enum(deliveryStatuses).optional(), limit: z.number().int().min(1).max(500).default(100), consistentWith: z.number().int().min(0).optional() }).strict(),
    response: listOf(webhookDeliverySchema),
  }),
};

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const webhookParams = z.object({ tenantId: z.uuid(), webhookId: z.uuid() }).strict();
const inTenant = { tenantParam: 'tenantId' } as const;
const consistent = z.object({ consistentWith: consistentWithParam }).strict();

export const webhookRoutes = routeGroup({
  create: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/webhooks', permission: P.webhooksWrite, tag: 'webhooks', idempotent: true,
    summary: 'Subscribe an HTTPS endpoint to event types of the tenant (answers the signing secret, once)',
    params: tenantParams, body: webhookBodySchema, response: { status: 201, schema: webhookCreatedSchema },
    forward: { rpc: webhookRpc.createWebhook, withPermissions: true },
  }),
  list: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/webhooks', permission: P.webhooksRead, tag: 'webhooks',
    summary: 'Webhook subscriptions, with their status and failures in a row',
    params: tenantParams, query: consistent, response: { status: 200, schema: listOf(webhookSchema) },
    forward: { rpc: webhookRpc.webhooks },
  }),
  get: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}', permission: P.webhooksRead, tag: 'webhooks',
    summary: 'One webhook subscription', params: webhookParams, query: consistent, response: { status: 200, schema: webhookSchema },
    forward: { rpc: webhookRpc.webhook },
  }),
  update: route({
    ...inTenant, method: 'PATCH', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}', permission: P.webhooksWrite, tag: 'webhooks', conditional: true,
    summary: 'Change a subscription; `enabled: true` re-enables one disabled after failures', params: webhookParams, body: webhookPatchSchema,
    response: { status: 200, schema: webhookAnswerSchema },
    forward: { rpc: webhookRpc.updateWebhook, withPermissions: true },
  }),
  remove: route({
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}', permission: P.webhooksWrite, tag: 'webhooks',
    summary: 'Delete a subscription', params: webhookParams, response: { status: 200, schema: z.object({ deleted: z.literal(true), position: positionSchema }) },
    forward: { rpc: webhookRpc.deleteWebhook },
  }),
  rotateSecret: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}/rotate-secret', permission: P.webhooksWrite, tag: 'webhooks',
    summary: 'A new signing secret (deliveries carry both signatures for 24 hours)', params: webhookParams, body: z.object({}).strict().optional(),
    response: { status: 200, schema: secretRotatedSchema },
    forward: { rpc: webhookRpc.rotateWebhookSecret },
  }),
  deliveries: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}/deliveries', permission: P.webhooksRead, tag: 'webhooks',
    summary: 'Deliveries with their status, attempts and last answer, newest first', params: webhookParams,
    query: z.object({ status: z.enum(deliveryStatuses).optional(), limit: queryInteger({ min: 1, max: 500 }).optional(), consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: listOf(webhookDeliverySchema) },
    forward: { rpc: webhookRpc.deliveries },
  }),
  redeliver: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver', permission: P.webhooksWrite, tag: 'webhooks',
    summary: 'Deliver an event again, now (same webhook-id)', params: webhookParams.extend({ deliveryId: text().min(1).max(200) }).strict(), body: z.object({}).strict().optional(),
    response: { status: 202, schema: z.object({ delivery: webhookDeliverySchema, position: positionSchema }) },
    forward: { rpc: webhookRpc.redeliver },
  }),
});
