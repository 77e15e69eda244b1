import { z } from 'zod';
import { planSchema, quotasSchema, tenantSettingsSchema, tenantStatusSchema } from '@keel/contracts';

const tenant = z.object({
  id: z.uuid(),
  slug: z.string(),
  name: z.string(),
  plan: planSchema,
  quotas: quotasSchema,
  settings: tenantSettingsSchema,
  status: tenantStatusSchema,
  suspendedReason: z.string().nullable(),
  version: z.number().int(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});

const envelope = z.object({
  id: z.uuid(),
  type: z.string(),
  schemaVersion: z.number().int(),
  tenantId: z.string(),
  aggregateType: z.string(),
  aggregateId: z.string(),
  aggregateVersion: z.number().int(),
  occurredAt: z.iso.datetime(),
  actor: z.object({ kind: z.string(), id: z.string(), tenantId: z.string().optional(), ip: z.string().optional(), userAgent: z.string().optional() }),
  correlationId: z.string(),
  causationId: z.string().optional(),
  data: z.record(z.string(), z.unknown()),
});

const ledgerEntry = z.object({
  seq: z.number().int(),
  hash: z.string(),
  prevHash: z.string(),
  recordedAt: z.iso.datetime(),
  event: z.union([envelope, z.unknown()]).describe('the envelope; for an incident, the published JSON as it was (or null)'),
  problem: z.string().optional().describe('set on an incident: why what was published there is not a valid envelope'),
  payload: z.string().optional().describe('an incident that was not JSON: the published bytes, base64'),
});

const projectionStatus = z.object({
  name: z.string().describe('<service>.<projection>'),
  service: z.string(),
  checkpoint: z.number().int().describe('last stream position applied'),
  lag: z.number().int().describe('events of its own subjects not yet applied'),
  healthy: z.boolean(),
  deadLetters: z.number().int().describe('unresolved dead letters'),
  leader: z.boolean().describe('the answering replica is the one applying'),
  lastError: z.string().optional(),
  incidents: z.number().int().optional(),
  rebuildingSince: z.iso.datetime().optional(),
  error: z.string().optional().describe('the service did not answer'),
});

const deadLetter = z.object({
  id: z.number().int(),
  projection: z.string(),
  position: z.number().int(),
  subject: z.string(),
  reason: z.string(),
  payload: z.string(),
  recordedAt: z.iso.datetime(),
  resolution: z.enum(['retried', 'skipped']).nullable(),
  resolvedAt: z.iso.datetime().nullable(),
  resolvedBy: z.string().nullable(),
});

/** Response shapes documented in OpenAPI (requests are documented from the validators themselves). */
export const responseSchemas: Record<string, z.ZodType> = {
  Tenant: tenant,
  TenantCommandResult: z.object({ tenant, version: z.number().int(), position: z.number().int().describe('Stream position of the event; pass as consistentWith') }),
  TenantPage: z.object({ items: z.array(tenant), nextCursor: z.string().nullable() }),
  LedgerPage: z.object({ items: z.array(ledgerEntry), nextCursor: z.string().nullable() }),
  VerifyResult: z.object({
    ok: z.boolean(), checked: z.number().int(), lastSeq: z.number().int().nullable(), firstInvalidSeq: z.number().int().optional(), problem: z.string().optional(),
    incidents: z.number().int().optional().describe('entries in the range that are not valid envelopes (chained and verified all the same)'),
  }),
  ProjectionList: z.object({ items: z.array(projectionStatus) }),
  DeadLetterList: z.object({ items: z.array(deadLetter) }),
  DeadLetter: deadLetter.extend({ eventPosition: z.number().int().optional().describe('stream position of the ops.dead_letter.skipped event') }),
  ProjectionRebuildResult: z.object({ name: z.string(), position: z.number().int(), replayed: z.number().int() }),
  CheckpointPage: z.object({
    items: z.array(z.object({ seq: z.number().int(), hash: z.string(), signedAt: z.iso.datetime(), keyId: z.string(), signature: z.string().describe('base64url Ed25519 signature of the RFC 8785 JSON {seq, hash, signedAt, keyId}') })),
    nextCursor: z.string().nullable(),
  }),
  JwkSet: z.object({ keys: z.array(z.object({ kty: z.literal('OKP'), crv: z.literal('Ed25519'), x: z.string(), kid: z.string(), alg: z.literal('EdDSA'), use: z.literal('sig') })) }),
  TokenPair: z.object({ accessToken: z.string(), refreshToken: z.string(), tokenType: z.literal('Bearer'), expiresIn: z.number().int() }),
  SessionList: z.object({
    items: z.array(z.object({ id: z.uuid(), tenantId: z.string(), userId: z.uuid(), createdAt: z.iso.datetime(), lastUsedAt: z.iso.datetime(), expiresAt: z.iso.datetime(), revokedAt: z.iso.datetime().nullable() })),
  }),
  UserCommandResult: z.object({
    id: z.uuid(), tenantId: z.string(), email: z.string(), name: z.string(), roles: z.array(z.string()), status: z.enum(['active', 'disabled']),
    version: z.number().int(), createdAt: z.iso.datetime(), updatedAt: z.iso.datetime(), position: z.number().int(),
  }),
  RebuildResult: z.object({ position: z.number().int() }),
  Problem: z.object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    instance: z.string(),
    code: z.string(),
    errors: z.array(z.object({ field: z.string(), in: z.string().optional(), message: z.string() })).optional(),
    traceId: z.string().optional(),
  }),
};
