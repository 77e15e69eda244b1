import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { Counter } from 'prom-client';
import { KeelConfig } from '@keel/config';
import { EventEnvelope, nameBasedUuid, securityEventTypes } from '@keel/contracts';
import { EventStore, KEEL_CONFIG, KEEL_LOGGER } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { Principal } from './request-context';

/** Principals followed in one window at once: a flood of new principals cannot grow memory without bound. */
export const MAX_PRINCIPALS = 10_000;
/** Distinct routes counted per principal and window (the event reports the 20 most refused). */
const MAX_ROUTES = 50;
const REPORTED_ROUTES = 20;

const denials = new Counter({
  name: 'keel_http_denials_total',
  help: 'Requests of authenticated principals refused with 403',
  registers: [metricsRegistry],
});
const untracked = new Counter({
  name: 'keel_http_denials_untracked_total',
  help: '403 refusals not recorded as events: more principals in a window than the gateway follows, or the log refused the record',
  registers: [metricsRegistry],
});

interface Window {
  principal: Principal;
  start: number;
  /** Refusals since the last record of this window. */
  pending: number;
  routes: Map<string, number>;
  /** Records of this window so far (0: the first refusal is still to be recorded). */
  records: number;
  correlationId: string;
}

/**
 * Makes 403s of authenticated principals visible without letting them flood the ledger: per
 * principal and window (KEEL_DENIAL_WINDOW_SECONDS), the first refusal is recorded at once as a
 * `security.access.denied` fact, and the refusals after it as one more fact with their count when
 * the window closes, so a principal probing a thousand routes a minute costs two ledger entries
 * per gateway per minute. Fact ids are derived from (gateway, principal, window, record), so a
 * retried publish is stored once.
 */
@Injectable()
export class DenialRecorder implements OnModuleInit, OnModuleDestroy {
  private readonly windowMs: number;
  // A restarted replica (same host name, same pid in a container) is another counter: its ids must not repeat the last one's.
  private readonly gateway = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  private readonly windows = new Map<string, Window>();
  private timer?: NodeJS.Timeout;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly store: EventStore,
    @Inject(KEEL_CONFIG) config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {
    this.windowMs = config.KEEL_DENIAL_WINDOW_SECONDS * 1_000;
  }

  onModuleInit(): void {
    this.timer = setInterval(() => this.closeWindows(Date.now()), Math.min(5_000, Math.max(250, this.windowMs / 4)));
    this.timer.unref();
  }

  /** Records what is still pending (shutdown): nothing counted is left unsaid. */
  async onModuleDestroy(): Promise<void> {
    clearInterval(this.timer);
    this.closeWindows(Number.POSITIVE_INFINITY);
    await Promise.allSettled([...this.inFlight]);
  }

  /** A request of `principal` to `method route` (the route's template) was refused with 403. */
  record(principal: Principal, method: string, route: string, correlationId: string, now = Date.now()): void {
    denials.inc();
    const key = `${principal.actor.kind}:${principal.actor.id}`;
    const start = Math.floor(now / this.windowMs) * this.windowMs;
    let w = this.windows.get(key);
    if (w && w.start !== start) {
      this.close(key, w);
      w = undefined;
    }
    if (!w) {
      if (this.windows.size >= MAX_PRINCIPALS) {
        untracked.inc();
        return;
      }
      w = { principal, start, pending: 0, routes: new Map(), records: 0, correlationId };
      this.windows.set(key, w);
    }
    w.pending++;
    const name = `${method} ${route}`;
    if (w.routes.has(name) || w.routes.size < MAX_ROUTES) w.routes.set(name, (w.routes.get(name) ?? 0) + 1);
    // The first refusal of a window is recorded at once.
    if (w.records === 0) this.flush(key, w);
  }

  /** Windows being followed (tests, metrics). */
  get size(): number {
    return this.windows.size;
  }

  private closeWindows(now: number): void {
    for (const [key, w] of this.windows) if (w.start + this.windowMs <= now) this.close(key, w);
  }

  private close(key: string, w: Window): void {
    this.windows.delete(key);
    if (w.pending > 0) this.flush(key, w);
  }

  private flush(key: string, w: Window): void {
    const { actor, tenantId } = w.principal;
    const record = w.records++;
    const windowId = nameBasedUuid(`security.access.denied|${this.gateway}|${key}|${w.start}`);
    const routes = [...w.routes]
      .sort((a, b) => b[1] - a[1])
      .slice(0, REPORTED_ROUTES)
      .map(([name, count]) => {
        const space = name.indexOf(' ');
        return { method: name.slice(0, space), route: name.slice(space + 1), count };
      });
    const fact: EventEnvelope = {
      id: nameBasedUuid(`${windowId}|${record}`),
      type: securityEventTypes.accessDenied,
      schemaVersion: 1,
      tenantId,
      aggregateType: 'denial',
      aggregateId: windowId,
      aggregateVersion: record + 1,
      occurredAt: new Date().toISOString(),
      // The principal by id only: no address, no user agent.
      actor: { kind: actor.kind, id: actor.id, ...(actor.tenantId ? { tenantId: actor.tenantId } : {}) },
      correlationId: w.correlationId,
      data: {
        principal: { kind: actor.kind, id: actor.id },
        windowStart: new Date(w.start).toISOString(),
        windowSeconds: this.windowMs / 1_000,
        count: w.pending,
        routes,
        gateway: this.gateway,
      },
    };
    w.pending = 0;
    w.routes = new Map();
    const sent = this.store
      .appendFacts([fact])
      .then(() => undefined)
      .catch((err: unknown) => {
        untracked.inc(fact.data.count as number);
        this.logger.warn({ err, principal: key }, 'could not record refused requests on the log');
      });
    this.inFlight.add(sent);
    void sent.finally(() => this.inFlight.delete(sent));
  }
}

/** Where a 403 to an authenticated principal is heard: Fastify's onResponse, for every route and whoever refused (guard or service). */
export function recordDenials(
  fastify: { addHook(name: 'onResponse', hook: (req: any, reply: { statusCode: number }, done: () => void) => void): unknown },
  recorder: DenialRecorder,
): void {
  fastify.addHook('onResponse', (req: { principal?: Principal; method: string; routeOptions?: { url?: string }; correlationId?: string }, reply, done) => {
    if (reply.statusCode === 403 && req.principal) recorder.record(req.principal, req.method, req.routeOptions?.url ?? 'unmatched', req.correlationId ?? 'unknown');
    done();
  });
}
