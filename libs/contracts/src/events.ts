import { z } from 'zod';
import { ServiceContract } from './contract';
import { contextOf, EventEnvelope } from './envelope';
import { PersonalField, personalFieldsOfSchema } from './personal';
import { opsEventSchemas } from './projections';
import { securityEventSchemas } from './security';
import { serviceContracts } from './services.generated';

/** Every event type Keel publishes → the schema of its body (`data`): each service's, the operators' (`ops.*`) and the security signals (`security.*`). */
export const eventSchemas: Readonly<Record<string, z.ZodType>> = (() => {
  const all: Record<string, z.ZodType> = {};
  const declared = [...(Object.values(serviceContracts) as ServiceContract[]).map((c) => [c.service, c.events] as const), ['ops', opsEventSchemas] as const, ['security', securityEventSchemas] as const];
  for (const [owner, events] of declared) {
    for (const [type, schema] of Object.entries(events)) {
      if (all[type]) throw new Error(`The event type ${type} of the ${owner} contract is declared twice; each type has one body schema.`);
      all[type] = schema;
    }
  }
  return all;
})();

/**
 * The bounded contexts whose event types are all declared here: an event of one of them with a type
 * that `eventSchemas` does not know is refused. The generic libraries' own tests publish events of
 * contexts that are not Keel's (`shop`, `counter`): those are not checked.
 */
export const eventContexts: ReadonlySet<string> = new Set(Object.keys(eventSchemas).map(contextOf));

/**
 * A publisher's bug, not bad input: an event whose type is not declared, or whose body does not
 * match its type's schema. Not a KeelError, so a caller is answered `internal` (and it is logged),
 * never a 400 that would blame the request.
 */
export class EventBodyError extends Error {
  constructor(
    readonly type: string,
    message: string,
  ) {
    super(message);
    this.name = 'EventBodyError';
  }
}

/**
 * Checks the body of an event about to be published against its type's schema (ARCHITECTURE.md §2:
 * "validated at publish"). Throws `EventBodyError` for an undeclared type of a Keel context or a
 * body that does not match; the body is not changed.
 */
export function validateEventBody(envelope: Pick<EventEnvelope, 'type' | 'data'>): void {
  const schema = eventSchemas[envelope.type];
  if (!schema) {
    if (!eventContexts.has(contextOf(envelope.type))) return;
    throw new EventBodyError(envelope.type, `Event type ${envelope.type} is not declared in libs/contracts (eventSchemas); declare its body schema before publishing it.`);
  }
  const result = schema.safeParse(envelope.data);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(data)'}: ${i.message}`).join('; ');
    throw new EventBodyError(envelope.type, `The body of a ${envelope.type} event does not match its schema: ${issues}`);
  }
}

const personalByType = new Map<string, readonly PersonalField[]>();

/** The personal fields of an event type's body, as its contract marks them (`personal()`); none for an undeclared type. */
export function personalFieldsOf(type: string): readonly PersonalField[] {
  let fields = personalByType.get(type);
  if (!fields) {
    const schema = eventSchemas[type];
    fields = schema ? personalFieldsOfSchema(schema) : [];
    personalByType.set(type, fields);
  }
  return fields;
}
