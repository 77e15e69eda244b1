import { EventEnvelope } from './envelope';

/**
 * Subject layout (ARCHITECTURE.md §2). A prefix (empty in production, `<run>.` in tests)
 * isolates one deployment's subjects from another's on a shared NATS server.
 */
export function eventSubject(
  prefix: string,
  e: Pick<EventEnvelope, 'tenantId' | 'type' | 'aggregateType' | 'aggregateId'>,
): string {
  const context = e.type.slice(0, e.type.indexOf('.'));
  return `${prefix}evt.${e.tenantId}.${context}.${e.aggregateType}.${e.aggregateId}`;
}

export const subjects = {
  allEvents: (prefix: string) => `${prefix}evt.>`,
  tenantEvents: (prefix: string, tenantId: string) => `${prefix}evt.${tenantId}.>`,
  contextEvents: (prefix: string, context: string) => `${prefix}evt.*.${context}.>`,
  aggregate: (prefix: string, tenantId: string, context: string, aggregateType: string, aggregateId: string) =>
    `${prefix}evt.${tenantId}.${context}.${aggregateType}.${aggregateId}`,
  command: (prefix: string, service: string, name: string) => `${prefix}cmd.${service}.${name}`,
  query: (prefix: string, service: string, name: string) => `${prefix}qry.${service}.${name}`,
};
