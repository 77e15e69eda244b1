import { z } from 'zod';
import { queryInteger } from './validation';
import { isoTime, pageOf, query, route, routeGroup, SameType, serviceContract } from './contract';
import { EventEnvelope, envelopeSchema } from './envelope';
import { KeelError } from './errors';
import { permissions } from './permissions';
import { text } from './text';

export const AUDIT_SERVICE = 'audit';

/**
 * One entry of the ledger. An entry with a `problem` is an incident: what was published there is not
 * a valid envelope; `event` is then the published JSON as it was (or null), `payload` the bytes (base64)
 * when they were not JSON. It is chained and verified like any other entry. A decision of several
 * events is one entry: `event` is its first, `events` all of them, in order.
 */
export type LedgerEntry =
  | { seq: number; hash: string; prevHash: string; recordedAt: string; event: EventEnvelope; events?: EventEnvelope[]; problem?: undefined }
  | { seq: number; hash: string; prevHash: string; recordedAt: string; event: unknown; problem: string; payload?: string };

export const auditQueries = { events: 'events', verify: 'verify', replay: 'replay', head: 'head' } as const;

export const auditEventsQuerySchema = z
  .object({
    tenantId: text().min(1).max(128).optional(),
    type: text().min(1).max(200).optional(),
    aggregateType: text().min(1).max(128).optional(),
    aggregateId: text().min(1).max(128).optional(),
    actorId: text().min(1).max(200).optional(),
    from: z.iso.datetime().optional(),
    to: z.iso.datetime().optional(),
    cursor: text().regex(/^\d{1,18}$/, 'must be a cursor this API returned').optional(),
    limit: z.number().int().min(1).max(1_000).default(100),
    /** Newest first unless asked otherwise. */
    order: z.enum(['asc', 'desc']).default('desc'),
  })
  .strict();
export type AuditEventsQuery = z.infer<typeof auditEventsQuerySchema>;

export const verifyQuerySchema = z
  .object({ fromSeq: z.number().int().min(1).optional(), toSeq: z.number().int().min(1).optional() })
  .strict()
  .refine((v) => v.fromSeq === undefined || v.toSeq === undefined || v.fromSeq <= v.toSeq, {
    message: 'fromSeq must not be greater than toSeq',
    path: ['fromSeq'],
  });
export type VerifyQuery = z.infer<typeof verifyQuerySchema>;

export interface VerifyResult {
  ok: boolean;
  checked: number;
  lastSeq: number | null;
  firstInvalidSeq?: number;
  problem?: string;
  /** Entries in the range that are incidents (not valid envelopes): chained and verified, but not events. */
  incidents?: number;
}

/** A page of the ledger for rebuilding a projection: events after `afterSeq`, in order. */
export const replayQuerySchema = z
  .object({
    afterSeq: z.number().int().min(0),
    limit: z.number().int().min(1).max(5_000).default(1_000),
    /** Only events of these contexts (e.g. `["tenant"]`); all when omitted. */
    contexts: z.array(text().min(1).max(64)).max(32).optional(),
  })
  .strict();
export type ReplayQuery = z.infer<typeof replayQuerySchema>;

export interface ReplayPage {
  events: { position: number; event: EventEnvelope }[];
  /** Highest sequence this page looked at (even if filtered out); the next page starts after it. */
  scannedTo: number;
  /** The ledger's last sequence when this page was read. */
  headSeq: number;
}

/** A page of checkpoints or incidents: after a cursor this API returned. */
export const ledgerCursorQuerySchema = z
  .object({
    cursor: text().regex(/^\d{1,18}$/, 'must be a cursor this API returned').optional(),
    limit: z.number().int().min(1).max(1_000).default(100),
  })
  .strict();

// ---- answers ----

export const ledgerEntrySchema = z
  .object({
    seq: z.number().int().min(1),
    hash: text(),
    prevHash: text(),
    recordedAt: isoTime,
    event: z.union([envelopeSchema, z.unknown()]).describe('the envelope (the first of a decision); for an incident, the published JSON as it was (or null)'),
    events: z.array(envelopeSchema).optional().describe('a decision of several events: all of them, in order'),
    problem: text({ multiline: true }).optional().describe('set on an incident: why what was published there is not a valid envelope'),
    payload: text().optional().describe('an incident that was not JSON: the published bytes, base64'),
  })
  .meta({ id: 'LedgerEntry' });
export const ledgerPageSchema = pageOf(ledgerEntrySchema).meta({ id: 'LedgerPage' });

export const verifyResultSchema = z
  .object({
    ok: z.boolean(),
    checked: z.number().int(),
    lastSeq: z.number().int().nullable(),
    firstInvalidSeq: z.number().int().optional(),
    problem: text({ multiline: true }).optional(),
    incidents: z.number().int().optional().describe('entries in the range that are not valid envelopes (chained and verified all the same)'),
  })
  .meta({ id: 'VerifyResult' });

export const checkpointSchema = z.object({
  seq: z.number().int(),
  hash: text(),
  signedAt: isoTime,
  keyId: text(),
  signature: text().describe('base64url Ed25519 signature of the RFC 8785 JSON {seq, hash, signedAt, keyId}'),
});
export const checkpointPageSchema = pageOf(checkpointSchema).meta({ id: 'CheckpointPage' });

/** Ed25519 public keys (the auth service's token keys and the audit service's checkpoint keys). */
export const jwkSetSchema = z
  .object({
    keys: z.array(z.object({ kty: z.literal('OKP'), crv: z.literal('Ed25519'), x: text(), kid: text(), alg: z.literal('EdDSA'), use: z.literal('sig') })),
  })
  .meta({ id: 'JwkSet' });

export const replayPageSchema = z.object({
  events: z.array(z.object({ position: z.number().int(), event: envelopeSchema })),
  scannedTo: z.number().int(),
  headSeq: z.number().int(),
});

// ---- queries ----

export const auditRpc = {
  events: query(AUDIT_SERVICE, 'events', { summary: 'Search the ledger', request: auditEventsQuerySchema, response: ledgerPageSchema }),
  verify: query(AUDIT_SERVICE, 'verify', { summary: 'Verify the hash chain over a range', request: verifyQuerySchema, response: verifyResultSchema, timeoutMs: 120_000 }),
  replay: query(AUDIT_SERVICE, 'replay', { summary: 'A page of the ledger for rebuilding a projection', request: replayQuerySchema, response: replayPageSchema }),
  head: query(AUDIT_SERVICE, 'head', { summary: "The ledger's last sequence and hash", request: z.object({}).loose(), response: z.object({ lastSeq: z.number().int(), hash: text() }) }),
  checkpoints: query(AUDIT_SERVICE, 'checkpoints', { summary: 'Signed checkpoints, oldest first', request: ledgerCursorQuerySchema, response: checkpointPageSchema }),
  incidents: query(AUDIT_SERVICE, 'incidents', { summary: 'Entries that are not valid envelopes, oldest first', request: ledgerCursorQuerySchema, response: ledgerPageSchema }),
  subjectEntries: query(AUDIT_SERVICE, 'subject_entries', {
    summary: "Ledger entries a person is actor or subject of (the actor, the aggregate, `userId` in the body; the same of their sessions and of the API keys they made), oldest first, their personal data decrypted and other people's address and user agent left out",
    request: z
      .object({
        tenantId: text().min(1).max(64),
        subjectId: text().min(1).max(200),
        afterSeq: z.number().int().min(0).default(0),
        limit: z.number().int().min(1).max(200).default(100),
      })
      .strict(),
    response: ledgerPageSchema,
  }),
  keys: query(AUDIT_SERVICE, 'keys', { summary: 'Public keys that verify checkpoints', request: z.object({}).loose(), response: jwkSetSchema }),
};

// ---- HTTP routes ----

const cursorQuery = ledgerCursorQuerySchema.extend({ limit: queryInteger({ min: 1, max: 1_000 }).default(100) }).strict();



export const auditRoutes = routeGroup({
  events: route({
    method: 'GET', path: '/api/v1/audit/events', permission: permissions.auditRead, tag: 'audit', summary: 'Search the ledger (newest first by default; cursor pagination)',
    // The audit service's own query, with numbers coming as query-string text.
    query: auditEventsQuerySchema.extend({
      from: z.iso.datetime().optional().describe('occurredAt at or after (ISO-8601)'),
      to: z.iso.datetime().optional().describe('occurredAt before (ISO-8601)'),
      limit: queryInteger({ min: 1, max: 1_000 }).default(100),
    }),
    response: { status: 200, schema: ledgerPageSchema },
    forward: {
      rpc: auditRpc.events,
      // Outside the platform, a caller reads its own tenant's trail only.
      request: ({ query }, caller) => {
        if (caller.crossTenant) return query;
        if (query.tenantId && query.tenantId !== caller.tenantId) throw new KeelError('not_found', 'No such tenant in your scope.');
        return { ...query, tenantId: caller.tenantId };
      },
    },
  }),
  checkpoints: route({
    method: 'GET', path: '/api/v1/audit/checkpoints', permission: permissions.auditRead, tag: 'audit',
    summary: 'Signed ledger checkpoints (Ed25519 over sequence, hash, time and key id), oldest first; platform principals only', query: cursorQuery,
    response: { status: 200, schema: checkpointPageSchema },
    // The ledger is one chain over every tenant: its checkpoints tell how much every tenant did and when.
    platformOnly: true,
    forward: { rpc: auditRpc.checkpoints },
  }),
  keys: route({
    method: 'GET', path: '/api/v1/audit/keys', permission: 'public', tag: 'audit', summary: 'Public keys (JWK set) that verify ledger checkpoints',
    response: { status: 200, schema: jwkSetSchema },
    forward: { rpc: auditRpc.keys },
  }),
  verify: route({
    method: 'GET', path: '/api/v1/audit/verify', permission: permissions.auditVerify, tag: 'audit', summary: 'Verify the hash chain over a range of sequences; platform principals only',
    query: z
      .object({ fromSeq: queryInteger({ min: 1 }).optional(), toSeq: queryInteger({ min: 1 }).optional() })
      .strict()
      .refine((v) => v.fromSeq === undefined || v.toSeq === undefined || v.fromSeq <= v.toSeq, { message: 'fromSeq must not be greater than toSeq', path: ['fromSeq'] }),
    response: { status: 200, schema: verifyResultSchema },
    // Verifying a long ledger takes a while: the query's declaration gives it more than a normal request.
    // A verification's counts tell the same, and it may run long over the whole ledger.
    platformOnly: true,
    forward: { rpc: auditRpc.verify },
  }),
});

// The interfaces callers use and the schemas the documents show cannot drift apart (checked by tsc).
const verifyResultMatches: SameType<z.output<typeof verifyResultSchema>, VerifyResult> = true;
void verifyResultMatches;

/** The audit service's contract: the ledger's queries (its events are everyone else's). */
export const auditContract = serviceContract({
  service: 'audit',
  routes: { audit: auditRoutes },
  rpcs: auditRpc,
  events: {},
  projections: 'ledger',
});
