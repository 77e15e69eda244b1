import { BaseRpcContext, CustomTransportStrategy, MessageHandler, Server } from '@nestjs/microservices';
import { KV, Msg, MsgHdrs, Subscription } from 'nats';
import { isObservable, lastValueFrom } from 'rxjs';
import { EventEnvelope } from '@keel/contracts';
import { Logger } from '@keel/observability';
import { durableName, Messaging } from '../connection';
import { DeadLetter, DeliveredEvent, DurableEventConsumer } from '../consumer';
import { serveRpc } from '../rpc';
import { KvLease, LEASE_TTL_MS } from './lease';

/** What a `@MessagePattern` handler may take as its second argument (`@Ctx()`). */
export class KeelRequestContext extends BaseRpcContext<[string, MsgHdrs | undefined]> {
  /** The subject without the deployment prefix. */
  getSubject(): string {
    return this.args[0];
  }
  getHeaders(): MsgHdrs | undefined {
    return this.args[1];
  }
}

/** What an `@EventPattern` handler may take as its second argument (`@Ctx()`). */
export class KeelEventContext extends BaseRpcContext<[string, number, number]> {
  /** The subject of the event on the stream, without the deployment prefix. */
  getSubject(): string {
    return this.args[0];
  }
  /** The event's position (stream sequence); the events of one decision share it. */
  getPosition(): number {
    return this.args[1];
  }
  /** How many times this event has been handed to this handler in this process (1 the first time). */
  getAttempt(): number {
    return this.args[2];
  }
}

/**
 * Extras of `@EventPattern(subject, { durable })`: the name of the handler's durable consumer
 * (unique within the service); by default it is derived from the service and the pattern.
 */
export interface KeelEventExtras {
  durable?: string;
}

export interface KeelNatsTransportOptions {
  /** The connection (or how to get it once the application exists: the strategy is made before). */
  messaging: Messaging | (() => Messaging);
  /** Queue group of the request handlers: one per service, shared by its replicas. */
  service: string | (() => string);
  logger: Logger;
  /** Events of one handler that fail this many times in a row are dead-lettered (default 5). */
  maxDeliver?: number;
  batchSize?: number;
  /**
   * Where dead letters go. By default they are kept in the JetStream KV bucket of the
   * transport (`<stream>_events`, keys `dead.<consumer>.<position>`), which outlives a restart.
   */
  deadLetter?(consumer: string, letter: DeadLetter): Promise<void>;
}

type Resolver<T> = T | (() => T);
const resolve = <T>(v: Resolver<T>): T => (typeof v === 'function' ? (v as () => T)() : v);

/** What a handler's call came to: Nest answers a plain value as is, an Observable (an error, an interceptor's stream) as its last value. */
const settled = (result: unknown): unknown => (isObservable(result) ? lastValueFrom(result, { defaultValue: undefined }) : result);

/** The events bucket of a deployment's stream: consumer positions, dead letters. */
export const eventsBucket = (m: Messaging) => durableName('', `${m.stream}_events`);
/** The leases bucket of a deployment's stream: which replica runs each event consumer. */
export const leasesBucket = (m: Messaging) => durableName('', `${m.stream}_leases`);

/**
 * Nest's microservices layer over nats.js (the way HorizonRepublic/nestjs-jetstream does it):
 *
 * - `@MessagePattern(subject)` handlers answer core NATS requests on `<prefix><subject>` in the
 *   service's queue group (N replicas share the requests), with the `RpcReply` format, the error
 *   mapping of `serveRpc` and the trace context from the headers. Register KeelRpcExceptionFilter
 *   as a global filter of the microservice so the handler's own error reaches that mapping.
 * - `@EventPattern(subject)` handlers each get a durable JetStream pull consumer filtered on
 *   `<prefix><subject>`, run on one replica at a time (a lease), delivering in order; an event is
 *   acked only after its handler resolved; one that throws is handed again (with back-off), and
 *   after `maxDeliver` failures (or a PermanentEventError) it is dead-lettered.
 *
 * `close()` stops taking requests, waits for those in flight and stops the event consumers.
 */
export class KeelNatsTransport extends Server implements CustomTransportStrategy {
  private subscriptions: Subscription[] = [];
  private consumers: DurableEventConsumer[] = [];
  private readonly inFlight = new Set<Promise<unknown>>();
  private kvs = new Map<string, Promise<KV>>();
  private listeners = new Map<string, Function[]>();

  constructor(private readonly o: KeelNatsTransportOptions) {
    super();
  }

  get messaging(): Messaging {
    return resolve(this.o.messaging);
  }

  listen(callback: (err?: unknown, ...info: unknown[]) => void): void {
    try {
      this.start();
      callback();
    } catch (error) {
      callback(error);
    }
  }

  async close(): Promise<void> {
    for (const s of this.subscriptions) s.unsubscribe();
    this.subscriptions = [];
    await Promise.allSettled([...this.inFlight]);
    const consumers = this.consumers;
    this.consumers = [];
    await Promise.allSettled(consumers.map((c) => c.stop()));
  }

  /** Listeners for `error` (a subscription error); the transport has no other events. */
  on<EventKey extends string = string, EventCallback extends Function = Function>(event: EventKey, callback: EventCallback): void {
    this.listeners.set(event, [...(this.listeners.get(event) ?? []), callback]);
  }

  unwrap<T>(): T {
    return this.messaging.nc as T;
  }

  /** The event consumers, for readiness checks and tests. */
  eventConsumers(): readonly DurableEventConsumer[] {
    return this.consumers;
  }

  private start(): void {
    const m = this.messaging;
    const service = resolve(this.o.service);
    for (const [pattern, handler] of this.messageHandlers) {
      if (handler.isEventHandler) this.consumers.push(this.eventConsumer(m, service, pattern, handler));
      else this.subscriptions.push(this.serveRequests(m, service, pattern, handler));
    }
    for (const c of this.consumers) c.start();
  }

  private serveRequests(m: Messaging, service: string, subject: string, handler: MessageHandler): Subscription {
    const run = async (body: unknown, msg: Msg) => {
      return settled(await handler(body, new KeelRequestContext([subject, msg.headers])));
    };
    const sub = serveRpc(m, subject, service, (body, msg) => this.track(run(body, msg)), this.o.logger);
    void sub.closed.catch((err) => this.emit('error', err));
    this.o.logger.debug({ subject }, 'serving requests');
    return sub;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  private eventConsumer(m: Messaging, service: string, pattern: string, handler: MessageHandler): DurableEventConsumer {
    const extras = (handler.extras ?? {}) as KeelEventExtras;
    const name = durableName(m.prefix, extras.durable ?? `${service}-${pattern.replace(/\*/g, 'any').replace(/>/g, 'all')}`);
    const chain: MessageHandler[] = [];
    for (let h: MessageHandler | undefined = handler; h; h = h.next as MessageHandler | undefined) chain.push(h);
    const lease = new KvLease(() => this.kv(leasesBucket(m), LEASE_TTL_MS), name, this.o.logger);
    const positionKey = `position.${name}`;
    // What this process has handled: a retried batch skips it (events of one message share a position,
    // so a message can be handled in part); `complete` is the last message handled whole.
    let handled = { position: 0, index: -1 };
    let complete = 0;
    let attempt = { position: 0, index: -1, n: 0 };
    const handle = async (batch: DeliveredEvent[]) => {
      let index = -1;
      let previous = -1;
      for (const d of batch) {
        if (d.position !== previous && previous !== -1) complete = Math.max(complete, previous);
        index = d.position === previous ? index + 1 : 0;
        previous = d.position;
        if (d.position < handled.position || (d.position === handled.position && index <= handled.index)) continue;
        attempt = attempt.position === d.position && attempt.index === index ? { ...attempt, n: attempt.n + 1 } : { position: d.position, index, n: 1 };
        const ctx = new KeelEventContext([d.subject.slice(m.prefix.length), d.position, attempt.n]);
        for (const h of chain) await settled(await h(d.event as EventEnvelope, ctx));
        handled = { position: d.position, index };
      }
      if (previous === -1) return;
      complete = Math.max(complete, previous);
      await (await this.kv(eventsBucket(m))).put(positionKey, new TextEncoder().encode(String(complete)));
    };
    return new DurableEventConsumer(m, {
      name,
      filterSubject: `${m.prefix}${pattern}`,
      logger: this.o.logger,
      batchSize: this.o.batchSize ?? 64,
      maxDeliver: this.o.maxDeliver ?? 5,
      position: async () => {
        const entry = await (await this.kv(eventsBucket(m))).get(positionKey);
        const stored = entry && entry.operation === 'PUT' ? Number(new TextDecoder().decode(entry.value)) : 0;
        return Math.max(stored, complete);
      },
      handle,
      deadLetter: async (letter) => {
        if (this.o.deadLetter) await this.o.deadLetter(name, letter);
        else await (await this.kv(eventsBucket(m))).put(`dead.${name}.${letter.position}`, new TextEncoder().encode(JSON.stringify({ ...letter, at: new Date().toISOString() })));
        // Past the dead letter, durably: a restart resumes after it.
        handled = { position: letter.position, index: Number.MAX_SAFE_INTEGER };
        complete = Math.max(complete, letter.position);
        await (await this.kv(eventsBucket(m))).put(positionKey, new TextEncoder().encode(String(complete)));
      },
      acquireLeadership: () => lease.acquire(),
      releaseLeadership: () => lease.release(),
      confirmLeadership: () => lease.stillHeld(),
    });
  }

  private kv(bucket: string, ttl?: number): Promise<KV> {
    let kv = this.kvs.get(bucket);
    if (!kv) {
      kv = this.messaging.js.views.kv(bucket, { history: 1, ...(ttl ? { ttl } : {}) });
      kv.catch(() => this.kvs.delete(bucket));
      this.kvs.set(bucket, kv);
    }
    return kv;
  }

  private emit(event: string, ...args: unknown[]): void {
    for (const cb of this.listeners.get(event) ?? []) (cb as (...a: unknown[]) => void)(...args);
  }
}
