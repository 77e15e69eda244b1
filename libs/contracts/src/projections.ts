import { z } from 'zod';
import { queryInteger } from './validation';
import { auditRpc, ledgerCursorQuerySchema, ledgerPageSchema } from './audit';
import { command, isoTime, listOf, positionSchema, query, route, routeGroup, SameType } from './contract';
import { actorSchema } from './envelope';
import { permissions } from './permissions';
import { text } from './text';

/**
 * Operating the read models: every service with projections (and the ledger, in audit) answers
 * these, so `GET /api/v1/admin/projections` can list them all and an operator can rebuild one and
 * deal with its dead letters. Names are `<service>.<projection>`, e.g. `tenant.tenants`. Which
 * services answer them is each contract's `projections` (see `PROJECTION_SERVICES` in api.ts).
 */
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

/** What an ops event's body holds. */
export const opsEventSchemas = {
  [opsEventTypes.deadLetterSkipped]: z.object({ projection: text(), position: z.number().int().min(0), subject: text(), reason: text({ multiline: true }) }),
  [opsEventTypes.deadLetterRetried]: z.object({ projection: text(), position: z.number().int().min(0) }),
  [opsEventTypes.projectionRebuilt]: z.object({ projection: text(), position: z.number().int().min(0), replayed: z.number().int().min(0) }),
} satisfies Record<(typeof opsEventTypes)[keyof typeof opsEventTypes], z.ZodType>;

// ---- answers ----

export const projectionStatusSchema = z.object({
  name: text().describe('<service>.<projection>'),
  service: text(),
  checkpoint: z.number().int().describe('last stream position applied'),
  lag: z.number().int().describe('events of its own subjects not yet applied'),
  healthy: z.boolean(),
  deadLetters: z.number().int().describe('unresolved dead letters'),
  leader: z.boolean().describe('the answering replica is the one applying'),
  lastError: text({ multiline: true }).optional(),
  incidents: z.number().int().optional(),
  rebuildingSince: isoTime.optional(),
});

export const deadLetterSchema = z.object({
  id: z.number().int(),
  projection: text(),
  position: z.number().int(),
  subject: text(),
  reason: text({ multiline: true }),
  payload: text({ multiline: true }),
  recordedAt: isoTime,
  resolution: z.enum(['retried', 'skipped']).nullable(),
  resolvedAt: isoTime.nullable(),
  resolvedBy: text().nullable(),
});
export const resolvedDeadLetterSchema = deadLetterSchema
  .extend({ eventPosition: z.number().int().optional().describe('stream position of the ops.dead_letter.skipped event') })
  .meta({ id: 'DeadLetter' });
export const rebuildResultSchema = z.object({ name: text(), position: z.number().int(), replayed: z.number().int() }).meta({ id: 'ProjectionRebuildResult' });

// ---- commands and queries: every service with projections serves these ----

/** The operator subjects of a service with read models (or the ledger). */
export const projectionOperatorRpc = <S extends string>(service: S) => ({
  projections: query(service, 'projections', { summary: `The ${service} service's read models: checkpoint, lag, health, dead letters`, request: z.object({}).loose(), response: listOf(projectionStatusSchema) }),
  deadLetters: query(service, 'dead_letters', { summary: 'Dead letters of one of its read models', request: deadLetterQuerySchema, response: listOf(deadLetterSchema) }),
  rebuild: command(service, 'rebuild_projection', { summary: 'Rebuild a read model beside the live one, then swap it in', request: rebuildCommandSchema, response: rebuildResultSchema, timeoutMs: 600_000 }),
});
/** The dead-letter subjects of a service with projections (the ledger has incidents instead). */
export const deadLetterRpc = <S extends string>(service: S) => ({
  retry: command(service, 'retry_dead_letter', { summary: 'Apply a dead-lettered event again', request: deadLetterCommandSchema, response: resolvedDeadLetterSchema }),
  skip: command(service, 'skip_dead_letter', { summary: 'Give a dead letter up (recorded as an ops.dead_letter.skipped event)', request: deadLetterCommandSchema, response: resolvedDeadLetterSchema }),
});

// ---- HTTP routes ----

const nameParams = z.object({ name: projectionNameSchema }).strict();
const letterParams = z.object({ name: projectionNameSchema, id: queryInteger({ min: 1 }) }).strict();
const admin = { permission: permissions.platformOperate, tag: 'operations' } as const;

export const adminRoutes = routeGroup({
  list: route({
    ...admin, method: 'GET', path: '/api/v1/admin/projections', summary: 'Every read model (and the ledger): checkpoint, lag, health and dead letters',
    response: {
      status: 200,
      schema: listOf(projectionStatusSchema.partial({ checkpoint: true, lag: true, healthy: true, deadLetters: true, leader: true }).extend({
        error: text({ multiline: true }).optional().describe('the service did not answer'),
      })).meta({ id: 'ProjectionList' }),
    },
  }),
  rebuild: route({
    ...admin, method: 'POST', path: '/api/v1/admin/projections/{name}/rebuild', params: nameParams,
    summary: 'Rebuild a read model from the ledger beside the live one, then swap it in (reads go on meanwhile)',
    response: { status: 200, schema: rebuildResultSchema },
  }),
  deadLetters: route({
    ...admin, method: 'GET', path: '/api/v1/admin/projections/{name}/dead-letters', params: nameParams, summary: 'Dead letters of a read model, oldest first',
    query: z
      .object({
        resolved: z.enum(['true', 'false']).default('false').describe('list resolved (retried or skipped) letters instead of open ones'),
        limit: queryInteger({ min: 1, max: 500 }).default(100),
      })
      .strict(),
    response: { status: 200, schema: listOf(deadLetterSchema).meta({ id: 'DeadLetterList' }) },
  }),
  retry: route({
    ...admin, method: 'POST', path: '/api/v1/admin/projections/{name}/dead-letters/{id}/retry', params: letterParams,
    summary: 'Apply a dead-lettered event again (after a fix); 409 with the reason if it still fails', response: { status: 200, schema: resolvedDeadLetterSchema },
  }),
  skip: route({
    ...admin, method: 'POST', path: '/api/v1/admin/projections/{name}/dead-letters/{id}/skip', params: letterParams,
    summary: 'Give a dead letter up; the skip is recorded as an event with you as its actor', response: { status: 200, schema: resolvedDeadLetterSchema },
  }),
  rebuildTenants: route({
    ...admin, method: 'POST', path: '/api/v1/admin/projections/tenants/rebuild', summary: 'Rebuild the tenant read model (same as projections/tenant.tenants/rebuild)',
    response: { status: 200, schema: z.object({ position: positionSchema }).meta({ id: 'RebuildResult' }) },
  }),
  incidents: route({
    ...admin, method: 'GET', path: '/api/v1/admin/ledger/incidents', summary: 'Ledger entries that are not valid event envelopes (each one an incident), oldest first',
    query: ledgerCursorQuerySchema.extend({ limit: queryInteger({ min: 1, max: 1_000 }).default(100) }).strict(),
    response: { status: 200, schema: ledgerPageSchema },
    forward: { rpc: auditRpc.incidents },
  }),
});

// The interfaces callers use and the schemas the documents show cannot drift apart (checked by tsc).
const answersMatch: [SameType<z.output<typeof projectionStatusSchema>, ProjectionStatus>, SameType<z.output<typeof deadLetterSchema>, DeadLetterInfo>, SameType<z.output<typeof rebuildResultSchema>, RebuildResult>] = [true, true, true];
void answersMatch;
