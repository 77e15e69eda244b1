import { Subscription } from 'nats';
import {
  deadLetterCommandSchema, deadLetterQuerySchema, KeelError, parseOrThrow, projectionSubjects, rebuildCommandSchema,
} from '@keel/contracts';
import { Messaging, serveRpc } from '@keel/messaging';
import { Logger } from '@keel/observability';
import type { ProjectionRunner } from './projection-runner';

interface ServiceRunners {
  runners: Map<string, ProjectionRunner>;
  subscriptions: Subscription[];
}

/** Per connection and service: the running projections and the operator subjects served for them. */
const registry = new WeakMap<Messaging, Map<string, ServiceRunners>>();

function find(entry: ServiceRunners, service: string, name: string): ProjectionRunner {
  const runner = entry.runners.get(name);
  if (!runner) throw new KeelError('not_found', `The ${service} service has no projection named ${JSON.stringify(name)}.`);
  return runner;
}

/**
 * Called by a runner when it starts: the first one of a service on a connection serves that service's
 * operator subjects (listing, dead letters, retry, skip, rebuild) for all of its projections, in the
 * service's queue group, so whichever replica answers acts through the shared database.
 */
export function registerRunner(runner: ProjectionRunner, logger: Logger): void {
  const m = runner.messaging;
  const services = registry.get(m) ?? new Map<string, ServiceRunners>();
  registry.set(m, services);
  const service = runner.service;
  let entry = services.get(service);
  if (!entry) {
    const created: ServiceRunners = { runners: new Map(), subscriptions: [] };
    const serve = (subject: string, fn: (body: unknown) => Promise<unknown>) => created.subscriptions.push(serveRpc(m, subject, service, fn, logger));
    serve(projectionSubjects.list(service), async () => ({ items: await Promise.all([...created.runners.values()].map((r) => r.status())) }));
    serve(projectionSubjects.deadLetters(service), async (body) => {
      const q = parseOrThrow(deadLetterQuerySchema, body, 'dead-letter listing');
      return { items: await find(created, service, q.projection).deadLetters(q.resolved, q.limit) };
    });
    serve(projectionSubjects.retry(service), async (body) => {
      const { meta, payload } = parseOrThrow(deadLetterCommandSchema, body, 'dead-letter retry');
      return find(created, service, payload.projection).retryDeadLetter(payload.id, meta.actor);
    });
    serve(projectionSubjects.skip(service), async (body) => {
      const { meta, payload } = parseOrThrow(deadLetterCommandSchema, body, 'dead-letter skip');
      return find(created, service, payload.projection).skipDeadLetter(payload.id, meta);
    });
    serve(projectionSubjects.rebuild(service), async (body) => {
      const { payload } = parseOrThrow(rebuildCommandSchema, body, 'projection rebuild');
      return find(created, service, payload.projection).rebuild();
    });
    entry = created;
    services.set(service, entry);
  }
  entry.runners.set(runner.name, runner);
}

/** Called by a runner when it stops: the last one of its service stops serving the operator subjects. */
export function unregisterRunner(runner: ProjectionRunner): void {
  const services = registry.get(runner.messaging);
  const entry = services?.get(runner.service);
  if (!entry || entry.runners.get(runner.name) !== runner) return;
  entry.runners.delete(runner.name);
  if (entry.runners.size === 0) {
    for (const s of entry.subscriptions) s.unsubscribe();
    services!.delete(runner.service);
  }
}
