import { AckPolicy, ConsumerConfig, ConsumerEvents, ConsumerMessages, DeliverPolicy, JsMsg, ReplayPolicy } from 'nats';
import { SpanStatusCode, trace } from '@opentelemetry/api';
import { EventEnvelope, storableText } from '@keel/contracts';
import { extractTraceContext, Logger, SpanKind } from '@keel/observability';
import { decodeJson } from './codec';
import { eventsOf } from './event-store';
import { Messaging } from './connection';
import { isNotFound } from './stream';

export interface DeliveredEvent {
  position: number;
  subject: string;
  event: EventEnvelope;
}

/** Thrown by a handler for an event that can never apply: it is dead-lettered, not retried. */
export class PermanentEventError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentEventError';
  }
}

/** A message exactly as the stream holds it, for consumers that must take any content (the ledger). */
export interface RawDelivery {
  position: number;
  subject: string;
  data: Uint8Array;
  /** `Nats-Msg-Id` of the message, when it had one. */
  msgId?: string;
}

/**
 * Thrown by a handler that cannot apply now for a reason that is not the event's (its model is held
 * while a rebuild swaps in): not an attempt, not an error to report; the consumer tries again shortly
 * from its position.
 */
export class RetryLaterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RetryLaterError';
  }
}

export interface DeadLetter {
  position: number;
  subject: string;
  payload: string;
  reason: string;
}

export interface DurableConsumerOptions {
  /** Durable consumer name (already unique per deployment). */
  name: string;
  filterSubject: string;
  /** Where the handler's committed effects reach (its checkpoint); delivery resumes after it. */
  position(): Promise<number>;
  /** Applies events in order and commits their effect (and the new position) durably. */
  handle?(batch: DeliveredEvent[]): Promise<void>;
  /**
   * Instead of `handle`: receives every message undecoded, whatever it holds, so no content can
   * stop the consumer (the ledger stores what was published, valid envelope or not).
   */
  handleRaw?(batch: RawDelivery[]): Promise<void>;
  /**
   * Records an event that can never apply and moves the position past it, durably.
   * Omit it for a consumer that must never skip an event (the ledger): it then retries forever.
   */
  deadLetter?(letter: DeadLetter): Promise<void>;
  /** Runs before consuming starts; resolves once this replica is the single active one. */
  acquireLeadership?(): Promise<void>;
  /** Gives leadership up (and aborts a pending acquire). */
  releaseLeadership?(): Promise<void>;
  /** Still the single active replica? Checked before each batch; false makes this one stand down. */
  confirmLeadership?(): Promise<boolean>;
  logger: Logger;
  batchSize?: number;
  /** Attempts of one event before it is dead-lettered. */
  maxDeliver?: number;
  /** The wait after a first failure, doubling with each failure in a row up to `maxMs` (200 ms, 5 s). */
  backoff?: { initialMs: number; maxMs: number };
  ackWaitMs?: number;
}

export interface ConsumerHealth {
  name: string;
  running: boolean;
  leader: boolean;
  healthy: boolean;
  deadLetters: number;
  lastError?: string;
}

const DEFAULT_BACKOFF = { initialMs: 200, maxMs: 5_000 };

/**
 * A durable pull consumer that settles a message only after the handler's effect is durable.
 *
 * Order matters to every consumer here (checkpoints skip what is at or below them), so on any
 * failure the consumer is not nak'd message by message (redeliveries would overtake newer
 * messages); it is repositioned at the handler's own durable position and resumes from there,
 * with capped back-off. An event that fails `maxDeliver` times in a row, or throws
 * PermanentEventError, is dead-lettered and the consumer reports itself unhealthy.
 */
export class DurableEventConsumer {
  private running = false;
  private leader = false;
  private loop?: Promise<void>;
  private messages?: ConsumerMessages;
  private wake?: () => void;
  private wakePause?: () => void;
  /** Something was applied or dead-lettered since the last failure (resets the back-off). */
  private progressed = false;
  /**
   * Highest position applied in this session. A message at or below it is a redelivery
   * (its ack wait ran out while it queued here) and is dropped, so delivery stays in order.
   */
  private applied = 0;
  private lastError?: string;
  private deadLetters = 0;
  /** Attempts of the event that is failing now (only one fails at a time: delivery is in order). */
  private failure?: { position: number; attempts: number };
  /** The last failure was a RetryLaterError. */
  private retryLater = false;
  private readonly batchSize: number;
  private readonly maxDeliver: number;

  constructor(private readonly m: Messaging, private readonly o: DurableConsumerOptions) {
    this.batchSize = o.batchSize ?? 256;
    this.maxDeliver = o.maxDeliver ?? 5;
  }

  health(): ConsumerHealth {
    return {
      name: this.o.name,
      running: this.running,
      leader: this.leader,
      healthy: this.running && this.deadLetters === 0 && !this.lastError,
      deadLetters: this.deadLetters,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.supervise();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.messages?.stop();
    this.wake?.();
    this.wakePause?.();
    if (!this.leader) await this.o.releaseLeadership?.();
    await this.loop;
    await this.o.releaseLeadership?.();
    this.leader = false;
  }

  /** Deletes the durable consumer and creates it again to deliver after `position`. */
  async reposition(position: number): Promise<void> {
    await this.m.jsm.consumers.delete(this.m.stream, this.o.name).catch((e) => {
      if (!isNotFound(e)) throw e;
    });
    await this.create(position);
  }

  private config(afterPosition: number): Partial<ConsumerConfig> {
    return {
      durable_name: this.o.name,
      filter_subject: this.o.filterSubject,
      // Delivery is in order and applied in order, so acking a batch's last message settles the batch.
      ack_policy: AckPolicy.All,
      ack_wait: (this.o.ackWaitMs ?? 30_000) * 1_000_000,
      max_ack_pending: this.batchSize * 4,
      replay_policy: ReplayPolicy.Instant,
      ...(afterPosition > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: afterPosition + 1 }
        : { deliver_policy: DeliverPolicy.All }),
    };
  }

  private async create(afterPosition: number): Promise<void> {
    try {
      await this.m.jsm.consumers.add(this.m.stream, this.config(afterPosition));
    } catch (error) {
      if (!/already in use|already exists/i.test(String((error as Error).message))) throw error;
    }
  }

  private async ensure(): Promise<void> {
    try {
      await this.m.jsm.consumers.info(this.m.stream, this.o.name);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      await this.create(await this.o.position());
    }
  }

  private async supervise(): Promise<void> {
    const { initialMs, maxMs } = this.o.backoff ?? DEFAULT_BACKOFF;
    let backoff = initialMs;
    let reposition = false;
    while (this.running) {
      try {
        if (!this.leader) {
          await this.o.acquireLeadership?.();
          this.leader = true;
          reposition = true;
        }
        if (reposition) {
          this.applied = await this.o.position();
          await this.reposition(this.applied);
          reposition = false;
        } else {
          await this.ensure();
          this.applied = await this.o.position();
        }
        const consumer = await this.m.js.consumers.get(this.m.stream, this.o.name);
        // Callback mode: messages queue here and are applied in batches of what has arrived;
        // the consumer's max_ack_pending bounds how much can be waiting.
        const queue: JsMsg[] = [];
        this.messages = await consumer.consume({
          max_messages: this.batchSize * 2,
          idle_heartbeat: 5_000,
          expires: 30_000,
          callback: (msg) => {
            queue.push(msg);
            this.wake?.();
          },
        });
        const failed = await this.consume(this.messages, queue);
        if (failed) {
          reposition = true;
          if (this.retryLater) {
            // Not a failure: try again soon, without growing the back-off.
            this.retryLater = false;
            await this.pause(250);
            continue;
          }
          if (this.progressed) backoff = initialMs;
          this.progressed = false;
          // Stood down (in consume) or lost its lock: acquire again at once (acquiring polls).
          if (!this.leader || (await this.leadershipLost())) continue;
          await this.pause(backoff);
          backoff = Math.min(backoff * 2, maxMs);
        } else {
          backoff = initialMs;
        }
      } catch (error) {
        this.lastError = (error as Error).message;
        if (this.progressed) backoff = initialMs;
        this.progressed = false;
        this.o.logger.warn({ err: error, consumer: this.o.name }, 'consumer failed; retrying');
        reposition = true;
        if (await this.leadershipLost()) continue;
        await this.pause(backoff);
        backoff = Math.min(backoff * 2, maxMs);
      }
    }
  }

  /**
   * After a failure: is this replica no longer the single active one (its lock's connection went
   * with a database restart, say)? Then it stands down at once, without the back-off: acquiring
   * again polls by itself, so delivery resumes within a poll of the database's return rather than
   * after a back-off that grew while it was away.
   */
  private async leadershipLost(): Promise<boolean> {
    if (!this.leader || !this.o.confirmLeadership) return false;
    if (await this.o.confirmLeadership().catch(() => false)) return false;
    this.o.logger.warn({ consumer: this.o.name }, 'leadership lost; standing down');
    this.leader = false;
    return true;
  }

  /** A back-off that stop() cuts short. */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakePause = done;
    }).finally(() => (this.wakePause = undefined));
  }

  /** Processes until stopped; returns true when a failure requires repositioning. */
  private async consume(messages: ConsumerMessages, queue: JsMsg[]): Promise<boolean> {
    let ended = false;
    let lost = false;
    void messages.closed().then(() => {
      ended = true;
      this.wake?.();
    });
    void (async () => {
      for await (const s of await messages.status()) {
        // Missed heartbeats: messages may have been lost in flight and would come back out of
        // order after their ack wait; start again from the durable position instead.
        if (s.type === ConsumerEvents.ConsumerDeleted || s.type === ConsumerEvents.ConsumerNotFound || s.type === ConsumerEvents.HeartbeatsMissed) {
          lost = true;
          messages.stop();
        }
      }
    })().catch(() => undefined);
    void (async () => {
      for await (const s of this.m.nc.status()) {
        if (ended) return;
        if (s.type === 'reconnect') {
          lost = true;
          messages.stop();
        }
      }
    })().catch(() => undefined);
    while (this.running && !ended) {
      if (queue.length === 0) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      const batch = queue.splice(0, this.batchSize).filter((msg) => msg.seq > this.applied);
      if (!batch.length) continue;
      if (this.o.confirmLeadership && !(await this.o.confirmLeadership())) {
        this.o.logger.warn({ consumer: this.o.name }, 'leadership lost; standing down');
        this.leader = false;
        messages.stop();
        return true;
      }
      const ok = await this.process(batch);
      if (!ok) {
        messages.stop();
        return true;
      }
    }
    return lost;
  }

  /** Applies a batch; falls back to one by one to isolate a failing event. */
  private async process(batch: JsMsg[]): Promise<boolean> {
    if (this.o.handleRaw) return this.processRaw(batch);
    const decoded = batch.map((msg) => this.decode(msg));
    if (decoded.every((d) => d.events)) {
      try {
        await this.traced(batch, decoded.flatMap((d) => d.events!));
        batch[batch.length - 1]!.ack();
        this.applied = batch[batch.length - 1]!.seq;
        this.progressed = true;
        this.lastError = undefined;
        return true;
      } catch (error) {
        if (batch.length === 1) return this.onFailure(batch[0]!, decoded[0]!, error);
      }
    }
    for (let i = 0; i < batch.length; i++) {
      const msg = batch[i]!;
      const d = decoded[i]!;
      if (!d.events) {
        if (!(await this.onFailure(msg, d, new PermanentEventError(d.error!)))) return false;
        continue;
      }
      try {
        await this.traced([msg], d.events);
        msg.ack();
        this.applied = msg.seq;
        this.progressed = true;
      } catch (error) {
        if (!(await this.onFailure(msg, d, error))) return false;
      }
    }
    this.lastError = undefined;
    return true;
  }

  private async processRaw(batch: JsMsg[]): Promise<boolean> {
    const raw = batch.map((msg): RawDelivery => {
      const msgId = msg.headers?.get('Nats-Msg-Id');
      return { position: msg.seq, subject: msg.subject, data: msg.data, ...(msgId ? { msgId } : {}) };
    });
    try {
      await this.traced(batch, () => this.o.handleRaw!(raw));
    } catch (error) {
      // Content cannot make a raw handler fail, so this is transient (the database, say): retry from the position.
      return this.onFailure(batch[0]!, raw[0]!, error);
    }
    batch[batch.length - 1]!.ack();
    this.applied = batch[batch.length - 1]!.seq;
    this.progressed = true;
    this.failure = undefined;
    this.lastError = undefined;
    return true;
  }

  private async traced(msgs: JsMsg[], events: DeliveredEvent[] | (() => Promise<void>)): Promise<void> {
    // One span per event, each a child of the trace that published the event.
    const tracer = trace.getTracer('keel');
    const spans = msgs.map((msg) =>
      tracer.startSpan(
        `consume ${this.o.name}`,
        { kind: SpanKind.CONSUMER, attributes: { 'keel.position': msg.seq, 'keel.subject': msg.subject } },
        extractTraceContext(msg.headers),
      ),
    );
    try {
      await (typeof events === 'function' ? events() : this.o.handle!(events));
    } catch (error) {
      for (const span of spans) span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
      throw error;
    } finally {
      for (const span of spans) span.end();
    }
  }

  /** A message's events: one, or all of one decision (they share the message's position and apply together). */
  private decode(msg: JsMsg): { position: number; subject: string; events?: DeliveredEvent[]; error?: string } {
    try {
      const events = eventsOf(decodeJson(msg.data)).map((event) => ({ position: msg.seq, subject: msg.subject, event }));
      return { position: msg.seq, subject: msg.subject, events };
    } catch (error) {
      return { position: msg.seq, subject: msg.subject, error: `invalid event envelope: ${(error as Error).message}` };
    }
  }

  /** Returns true when the consumer may go on (the event was dead-lettered). */
  private async onFailure(msg: JsMsg, d: { position: number; subject: string }, error: unknown): Promise<boolean> {
    if (error instanceof RetryLaterError) {
      this.retryLater = true;
      this.o.logger.debug({ consumer: this.o.name, position: d.position, reason: error.message }, 'event not applied now; trying again shortly');
      return false;
    }
    const reason = (error as Error).message ?? String(error);
    const attempts = this.failure?.position === d.position ? this.failure.attempts + 1 : 1;
    this.failure = { position: d.position, attempts };
    const permanent = error instanceof PermanentEventError;
    this.lastError = `position ${d.position}: ${reason}`;
    if (!this.o.deadLetter || (!permanent && attempts < this.maxDeliver)) {
      this.o.logger.warn({ consumer: this.o.name, position: d.position, attempts, reason }, 'event not applied; will retry');
      return false;
    }
    try {
      // Both go into text columns: what the message held (a NUL byte, say) must not stop the dead letter.
      await this.o.deadLetter({
        position: d.position,
        subject: d.subject,
        payload: storableText(new TextDecoder().decode(msg.data), { multiline: true }),
        reason: storableText(reason, { multiline: true }),
      });
    } catch (dlqError) {
      this.o.logger.error({ err: dlqError, consumer: this.o.name, position: d.position }, 'could not record dead letter');
      return false;
    }
    msg.term();
    this.applied = Math.max(this.applied, d.position);
    this.failure = undefined;
    this.deadLetters++;
    this.progressed = true;
    this.o.logger.error({ consumer: this.o.name, position: d.position, reason }, 'event dead-lettered');
    return true;
  }
}
