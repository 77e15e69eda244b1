import { z } from 'zod';
import type { EventEnvelope } from './envelope';

/**
 * Personal data in events (issue 7, crypto-shredding). A contract marks a field of an event body
 * personal with `personal(text())`; the libraries seal every such field, and the actor's address
 * and user agent in every envelope, under the data key of the person it is about before the event
 * is published (see `PersonalData` in libs/messaging), and open them for readers. Nothing else
 * registers personal fields: a new service's events are sealed by declaring them here.
 */
export interface PersonalFieldSpec {
  /**
   * Whose data it is: the aggregate's (`aggregate`: the user a user event is about), or the person
   * whose id is in a sibling field of the body (`{ field: 'userId' }`).
   */
  subject: 'aggregate' | { field: string };
}

const registry = z.registry<PersonalFieldSpec>();

/** Marks a text field of an event body personal: sealed per data subject, `"[erased]"` once erased. */
export function personal<S extends z.ZodType<string | undefined | null>>(schema: S, spec: PersonalFieldSpec = { subject: 'aggregate' }): S {
  registry.add(schema, spec);
  return schema;
}

/** A personal field of an event type's body: its path below `data`, and whose it is. */
export interface PersonalField {
  path: string[];
  subject: PersonalFieldSpec['subject'];
}

/** What a reader gets for a field whose data subject was erased. */
export const ERASED = '[erased]';

/** The actor fields that are personal data in every envelope (of the person the actor is, see `actorSubject`). */
export const PERSONAL_ACTOR_FIELDS = ['ip', 'userAgent'] as const;

interface Def {
  type: string;
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  element?: z.ZodType;
  options?: z.ZodType[];
  in?: z.ZodType;
  out?: z.ZodType;
  left?: z.ZodType;
  right?: z.ZodType;
  valueType?: z.ZodType;
}

/** The schemas nested in one that sealing does not follow (array items, union options, pipes, records, intersections). */
function unreachable(def: Def): z.ZodType[] {
  return [def.element, ...(def.options ?? []), def.in, def.out, def.left, def.right, def.valueType].filter((x): x is z.ZodType => !!x);
}

function containsPersonal(schema: z.ZodType, seen = new Set<z.ZodType>()): boolean {
  if (seen.has(schema)) return false;
  seen.add(schema);
  if (registry.get(schema)) return true;
  const def = (schema as unknown as { _zod: { def: Def } })._zod.def;
  const nested = [...(def.innerType ? [def.innerType] : []), ...Object.values(def.shape ?? {}), ...unreachable(def)];
  return nested.some((n) => containsPersonal(n, seen));
}

/** The personal fields of a body schema (objects, optional, nullable and defaulted fields are followed). */
export function personalFieldsOfSchema(schema: z.ZodType, at: string[] = []): PersonalField[] {
  const spec = registry.get(schema);
  if (spec) return [{ path: at, subject: spec.subject }];
  const def = (schema as unknown as { _zod: { def: Def } })._zod.def;
  if (def.innerType && ['optional', 'nullable', 'default', 'readonly', 'prefault', 'nonoptional', 'catch'].includes(def.type)) {
    return personalFieldsOfSchema(def.innerType, at);
  }
  if (def.type === 'object') {
    const shape = (schema as z.ZodObject).shape as Record<string, z.ZodType>;
    return Object.entries(shape).flatMap(([key, field]) => personalFieldsOfSchema(field, [...at, key]));
  }
  // A personal field where sealing cannot reach it would be published in clear: refused at once.
  if (unreachable(def).some((n) => containsPersonal(n))) {
    throw new Error(`personal() at data.${at.join('.') || '(body)'} sits inside ${def.type}, where it is not sealed; make it a field of an object (optional or nullable if need be).`);
  }
  return [];
}

/** Whose data subject a personal value belongs to: the tenant the person is in, and their id. */
export interface SubjectRef {
  tenantId: string;
  subjectId: string;
}

/**
 * The data subject an envelope's actor is: a user (in their own tenant), an API key (in its tenant:
 * erasing a person erases the keys they made too), the person a system actor works for
 * (`onBehalfOf`), or an operator or service by its id (in the platform tenant).
 */
export function actorSubject(e: Pick<EventEnvelope, 'tenantId' | 'actor'>): SubjectRef {
  const a = e.actor;
  if (a.onBehalfOf) return { tenantId: a.tenantId ?? e.tenantId, subjectId: a.onBehalfOf };
  const person = a.kind === 'user' || a.kind === 'api_key';
  return { tenantId: a.tenantId ?? (person ? e.tenantId : 'platform'), subjectId: a.id };
}

/** Whose data a personal body field of `e` is, or null when the body does not name them. */
export function fieldSubject(e: Pick<EventEnvelope, 'tenantId' | 'aggregateId' | 'data'>, f: PersonalField): SubjectRef | null {
  if (f.subject === 'aggregate') return { tenantId: e.tenantId, subjectId: e.aggregateId };
  const id = (e.data as Record<string, unknown>)[f.subject.field];
  return typeof id === 'string' && id ? { tenantId: e.tenantId, subjectId: id } : null;
}
