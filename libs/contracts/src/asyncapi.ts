import { z } from 'zod';
import { allRpcs } from './api';
import { RpcDecl } from './contract';
import { envelopeSchema } from './envelope';
import { errorCatalogue } from './errors';
import { eventSchemas } from './events';
import { text } from './text';

type Json = Record<string, unknown>;

/**
 * The AsyncAPI 3 document of Keel's messaging, derived from the same declarations as everything
 * else: a channel per context and aggregate type (`evt.{tenantId}.<context>.<aggregate>.{aggregateId}`)
 * with a message per event type (the envelope, its `data` the type's body schema), and a channel per
 * command and query subject with a request/reply operation. Written from the services' side: they
 * send the events and receive the requests (and reply). Subjects are without the deployment prefix.
 */
export function asyncApiDocument(options: { version?: string } = {}): Json {
  const schemas: Record<string, unknown> = {};
  const channels: Record<string, Json> = {};
  const operations: Record<string, Json> = {};
  const messages: Record<string, Json> = {};

  /** JSON Schema (draft-07) of a zod schema; shared named schemas (`.meta({ id })`) become components. */
  const toSchema = (schema: z.ZodType, io: 'input' | 'output'): unknown => {
    const json = z.toJSONSchema(schema, { target: 'draft-7', io, unrepresentable: 'any' }) as Json;
    const { $schema: _, definitions, ...rest } = json;
    for (const [id, def] of Object.entries((definitions ?? {}) as Record<string, unknown>)) schemas[id] ??= rewriteRefs(def);
    return rewriteRefs(rest);
  };

  // ---- events: one channel per context and aggregate type ----
  const byAggregate = new Map<string, string[]>();
  for (const type of Object.keys(eventSchemas).sort()) {
    const [context, aggregate] = type.split('.') as [string, string];
    const key = `${context}.${aggregate}`;
    byAggregate.set(key, [...(byAggregate.get(key) ?? []), type]);
  }
  for (const [key, types] of byAggregate) {
    const [context, aggregate] = key.split('.') as [string, string];
    const channel = `events.${key}`;
    const channelMessages: Record<string, Json> = {};
    for (const type of types) {
      const name = messageName(type);
      messages[name] = {
        name: type,
        title: type,
        summary: `A ${type} event: the envelope, with this type's body as data`,
        contentType: 'application/json',
        headers: {
          type: 'object',
          properties: {
            'Nats-Msg-Id': { type: 'string', description: 'the event id: a retried publish is stored once' },
            'Keel-Correlation-Id': { type: 'string' },
            traceparent: { type: 'string', description: 'W3C trace context' },
          },
        },
        payload: toSchema(envelopeSchema.extend({ type: z.literal(type), data: eventSchemas[type]! }), 'output'),
      };
      channelMessages[name] = { $ref: `#/components/messages/${name}` };
    }
    channels[channel] = {
      address: `evt.{tenantId}.${context}.${aggregate}.{aggregateId}`,
      title: `${context} ${aggregate} events`,
      description:
        `Events of ${context}'s ${aggregate} aggregates, on JetStream stream EVENTS. ` +
        'A decision of several events is one message: a JSON array of their envelopes, in order.',
      parameters: {
        tenantId: { $ref: '#/components/parameters/tenantId' },
        aggregateId: { $ref: '#/components/parameters/aggregateId' },
      },
      messages: channelMessages,
    };
    operations[`publish.${key}`] = {
      action: 'send',
      channel: { $ref: `#/channels/${escapePointer(channel)}` },
      summary: `${context} publishes its ${aggregate} events (subscribe to evt.*.${context}.${aggregate}.> to follow them)`,
      messages: Object.keys(channelMessages).map((name) => ({ $ref: `#/channels/${escapePointer(channel)}/messages/${name}` })),
    };
  }

  // ---- commands and queries: request/reply over core NATS ----
  for (const decl of allRpcs()) {
    const request = `${decl.subject}.request`;
    const reply = `${decl.subject}.reply`;
    messages[request] = {
      name: request,
      title: `${decl.subject} request`,
      contentType: 'application/json',
      payload: toSchema(decl.request, 'input'),
    };
    messages[reply] = {
      name: reply,
      title: `${decl.subject} reply`,
      contentType: 'application/json',
      payload: toSchema(replySchema(decl), 'output'),
    };
    channels[decl.subject] = {
      address: decl.subject,
      title: decl.subject,
      description: `${decl.summary}. NATS request/reply (never JetStream), served in the ${decl.service} service's queue group.`,
      messages: { request: { $ref: `#/components/messages/${escapePointer(request)}` } },
    };
    channels[reply] = {
      address: null,
      title: `${decl.subject} reply`,
      description: "The requester's reply inbox.",
      messages: { reply: { $ref: `#/components/messages/${escapePointer(reply)}` } },
    };
    operations[decl.subject] = {
      action: 'receive',
      channel: { $ref: `#/channels/${escapePointer(decl.subject)}` },
      summary: decl.summary,
      description: `A ${decl.kind}${decl.timeoutMs ? `; callers wait up to ${decl.timeoutMs} ms` : ''}.`,
      messages: [{ $ref: `#/channels/${escapePointer(decl.subject)}/messages/request` }],
      reply: {
        address: { location: '$message.header#/replyTo', description: 'the inbox NATS gives the request' },
        channel: { $ref: `#/channels/${escapePointer(reply)}` },
        messages: [{ $ref: `#/channels/${escapePointer(reply)}/messages/reply` }],
      },
    };
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'Keel messaging',
      version: options.version ?? '1.0.0',
      description:
        'The event subjects and event types Keel publishes on JetStream, and the command and query subjects its services answer over NATS request/reply. ' +
        'Subjects are shown without the deployment prefix (empty in production).',
    },
    defaultContentType: 'application/json',
    channels,
    operations,
    components: {
      schemas,
      messages,
      parameters: {
        tenantId: { description: 'The tenant the aggregate belongs to (`platform` for platform-owned aggregates)' },
        aggregateId: { description: 'The aggregate id' },
      },
    },
  };
}

/** What a handler answers: its value, or a Keel error. */
function replySchema(decl: RpcDecl): z.ZodType {
  return z.union([
    z.object({ ok: z.literal(true), value: decl.response }),
    z.object({
      ok: z.literal(false),
      error: z.object({
        code: z.enum(Object.keys(errorCatalogue) as [string, ...string[]]),
        message: text({ multiline: true }),
        fields: z.array(z.object({ field: text(), message: text({ multiline: true }), in: z.enum(['body', 'query', 'path', 'header']).optional() })).optional(),
      }),
    }),
  ]);
}

/** `tenant.tenant.created` → `tenant.tenant.created` (message names keep the type; only pointer characters are escaped). */
const messageName = (type: string) => type;

/** A JSON pointer segment (RFC 6901). */
const escapePointer = (segment: string) => segment.replace(/~/g, '~0').replace(/\//g, '~1');

/** Zod's `#/definitions/X` references become `#/components/schemas/X`. */
function rewriteRefs(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(rewriteRefs);
  if (!value || typeof value !== 'object') return value;
  const out: Json = {};
  for (const [k, v] of Object.entries(value as Json)) {
    out[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/definitions/') ? `#/components/schemas/${v.slice('#/definitions/'.length)}` : rewriteRefs(v);
  }
  return out;
}
