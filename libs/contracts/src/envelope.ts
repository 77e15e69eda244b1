import { z } from 'zod';
import Ajv2020 from 'ajv/dist/2020';
import { createHash } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { parseOrThrow } from './validation';

/** A token that can stand in one position of a NATS subject. */
export const subjectToken = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, "_" or "-" only (it is a NATS subject token)');

/** Who does something, as a command carries it (plain: the gateway fills it in from the request). */
export const actorSchema = z
  .object({
    kind: z.enum(['user', 'api_key', 'service', 'system']),
    id: z.string().min(1).max(200),
    tenantId: z.string().optional(),
    /**
     * For a system actor working on a person's request (a refresh-token reuse, a sign-in's
     * bookkeeping): that person's id, whose personal data the address and user agent are.
     */
    onBehalfOf: z.string().min(1).max(200).optional(),
    ip: z.string().max(64).optional(),
    userAgent: z.string().max(512).optional(),
  })
  .strict();
export type Actor = z.infer<typeof actorSchema>;

/**
 * The actor as an envelope holds it: its address and user agent are personal data, sealed together
 * before publishing into `personal` (`enc:v1:ip,userAgent:…`, see libs/messaging's personal-data.ts);
 * opened, they are back in `ip` and `userAgent`. The bound covers the largest plain pair a command
 * may carry (64 + 512 characters, each up to six bytes as JSON), sealed and encoded.
 */
export const SEALED_ACTOR_MAX = 6_000;
export const envelopeActorSchema = actorSchema.extend({ personal: z.string().max(SEALED_ACTOR_MAX).optional() }).strict();

export const eventTypeSchema = z
  .string()
  .regex(/^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$/, '<context>.<aggregate>.<past-tense verb>');

export const envelopeSchema = z
  .object({
    id: z.uuid(),
    type: eventTypeSchema,
    schemaVersion: z.number().int().min(1),
    tenantId: subjectToken,
    aggregateType: subjectToken,
    aggregateId: subjectToken,
    aggregateVersion: z.number().int().min(1),
    occurredAt: z.iso.datetime(),
    actor: envelopeActorSchema,
    correlationId: z.string().min(1).max(200),
    causationId: z.string().min(1).max(200).optional(),
    commandId: z.string().min(1).max(200).optional(),
    data: z.record(z.string(), z.unknown()),
  })
  .strict();

export type EventEnvelope<D = Record<string, unknown>> = Omit<z.infer<typeof envelopeSchema>, 'data'> & {
  data: D;
};

/** An envelope together with where it sits in the stream. */
export interface PositionedEvent<D = Record<string, unknown>> {
  position: number;
  event: EventEnvelope<D>;
}

export const PLATFORM_TENANT = 'platform';

export function newEventId(): string {
  return uuidv7();
}

/**
 * A UUID (version 8, RFC 9562) made from SHA-256 of `name`: the same name always gives the same id,
 * in every replica and after any restart (event ids from a command id, an operator action's event).
 */
/** Whether `s` is a UUID in canonical form (any case); a tenant id is, `platform` is not. */
export const isUuid = (s: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

export function nameBasedUuid(name: string): string {
  const b = createHash('sha256').update(name).digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x80;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * The envelope schema compiled once to a JSON Schema validator (ajv): about ten times faster than
 * zod on the hot paths (every consumer, the ledger). The zod schema stays the definition; the JSON
 * Schema is generated from it, and its patterns carry the uuid and date-time rules. String lengths are
 * counted in code points, as zod 4 counts them (a test holds the two to the same answers).
 */
const compiledEnvelope = new Ajv2020({ strict: false, validateFormats: false, allErrors: false }).compile(
  z.toJSONSchema(envelopeSchema, { target: 'draft-2020-12' }),
);

/** Whether `input` is a valid envelope (no error detail: for the hot path). */
export function isEnvelope(input: unknown): input is EventEnvelope {
  return compiledEnvelope(input) as boolean;
}

export function validateEnvelope(input: unknown): EventEnvelope {
  if (isEnvelope(input)) return input;
  // Invalid: zod names every offending field.
  return parseOrThrow(envelopeSchema, input, 'event envelope') as EventEnvelope;
}

/** The bounded context of an event type (`tenant` in `tenant.tenant.created`). */
export function contextOf(type: string): string {
  return type.slice(0, type.indexOf('.'));
}
