import { z } from 'zod';
import { actorSchema } from './envelope';
import { text } from './text';

/**
 * Operating the read models: every service with projections (and the ledger, in audit) answers
 * these, so `GET /api/v1/admin/projections` can list them all and an operator can rebuild one and
 * deal with its dead letters. Names are `<service>.<projection>`, e.g. `tenant.tenants`.
 */
export const PROJECTION_SERVICES = ['audit', 'tenant', 'auth'] as const;
export type ProjectionService = (typeof PROJECTION_SERVICES)[number];

export const projectionSubjects = {
  list: (service: string) => `qry.${service}.projections`,
  deadLetters: (service: string) => `qry.${service}.dead_letters`,
  rebuild: (service: string) => `cmd.${service}.rebuild_projection`,
  retry: (service: string) => `cmd.${service}.retry_dead_letter`,
  skip: (service: string) => `cmd.${service}.skip_dead_letter`,
} as const;

export interface ProjectionStatus {
  /** `<service>.<projection>`. */
  name: string;
  service: string;
  /** Last stream position applied. */
  checkpoint: number;
  /** Events of its own subjects it has not applied yet (delivered or not). */
  lag: number;
  /** Applying cleanly, with no unresolved dead letter. */
  healthy: boolean;
  /** Unresolved dead letters (durable: a restart does not clear them). */
  deadLetters: number;
  /** Whether the replica that answered is the one applying, and its last error. */
  leader: boolean;
  lastError?: string;
  /** Entries that are not valid envelopes (the ledger only). */
  incidents?: number;
  /** A rebuild is running since then. */
  rebuildingSince?: string;
}

export interface DeadLetterInfo {
  id: number;
  projection: string;
  position: number;
  subject: string;
  reason: string;
  payload: string;
  recordedAt: string;
  resolution: 'retried' | 'skipped' | null;
  resolvedAt: string | null;
  resolvedBy: string | null;
}

export interface RebuildResult {
  name: string;
  /** The stream position the rebuilt model reached when it replaced the live one. */
  position: number;
  /** Events replayed from the ledger into the model built beside the live one. */
  replayed: number;
}

export const projectionNameSchema = text()
  .regex(/^[a-z][a-z0-9_-]{0,63}\.[a-z][a-z0-9_-]{0,63}$/, 'must be <service>.<projection>, as GET /api/v1/admin/projections lists them');

export const deadLetterQuerySchema = z
  .object({
    projection: text().regex(/^[a-z][a-z0-9_-]{0,63}$/),
    resolved: z.boolean().default(false),
    limit: z.number().int().min(1).max(500).default(100),
  })
  .strict();

export const deadLetterCommandSchema = z
  .object({
    meta: z.object({ actor: actorSchema, correlationId: text().min(1).max(200) }).passthrough(),
    payload: z.object({ projection: text().regex(/^[a-z][a-z0-9_-]{0,63}$/), id: z.number().int().min(1) }).strict(),
  })
  .strict();

export const rebuildCommandSchema = z
  .object({
    meta: z.object({ actor: actorSchema, correlationId: text().min(1).max(200) }).passthrough(),
    payload: z.object({ projection: text().regex(/^[a-z][a-z0-9_-]{0,63}$/) }).strict(),
  })
  .strict();

/** The operator's record of a skipped dead letter: the skip is itself an event, with its actor. */
export const opsEventTypes = {
  deadLetterSkipped: 'ops.dead_letter.skipped',
  deadLetterRetried: 'ops.dead_letter.retried',
  projectionRebuilt: 'ops.projection.rebuilt',
} as const;
