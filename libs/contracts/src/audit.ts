import { z } from 'zod';
import { EventEnvelope } from './envelope';
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
