import { headers as natsHeaders, JetStreamClient, JetStreamManager, MsgHdrs, PubAck, StoredMsg } from 'nats';
import { EventEnvelope, eventSubject, KeelError, PositionedEvent, SEALED_ACTOR_MAX, validateEnvelope, validateEventBody } from '@keel/contracts';
import { injectTraceContext } from '@keel/observability';
import { decodeJson, encodeJson } from './codec';
import { holdsPersonalData } from './personal-data';
import { Messaging } from './connection';
import { isNotFound } from './stream';

interface DirectStreamAPI {
  getMessage(stream: string, query: { seq: number; next_by_subj?: string }): Promise<StoredMsg>;
}

/**
 * The envelopes of one stored message: one, or the events of one decision (a non-empty array).
 * Throws (as envelope validation does) for anything else.
 */
export function eventsOf(decoded: unknown): EventEnvelope[] {
  if (!Array.isArray(decoded)) return [validateEnvelope(decoded)];
  if (decoded.length === 0) throw new KeelError('validation_failed', 'The event envelope is invalid: an empty decision');
  return decoded.map((e) => validateEnvelope(e));
}

/**
 * A sealed envelope differs from the plain one that was validated only in its personal values: the
 * body's (which readers do not bound) and the actor's, sealed into `actor.personal`, whose bound
 * every reader applies. That bound holds for every plain actor a command may carry (a unit test
 * seals the widest); this check makes sure, without validating the whole envelope again.
 */
function checkSealed(e: EventEnvelope): void {
  const personal = (e.actor as { personal?: unknown }).personal;
  if (typeof personal === 'string' && personal.length > SEALED_ACTOR_MAX) {
    throw new Error(`The sealed actor of a ${e.type} event is ${personal.length} characters, more than readers take (${SEALED_ACTOR_MAX}).`);
  }
}

/**
 * `events` with their personal data sealed (`tx`: the caller's open transaction, for a key store of
 * its own), checked against what readers take (a reader must never meet an envelope it refuses). Without a `PersonalData` nothing is sealed, and an event holding personal
 * data is refused: it is never published in clear.
 */
export async function sealed(m: Messaging, events: EventEnvelope[], tx?: unknown): Promise<EventEnvelope[]> {
  if (!m.personalData) {
    if (events.some(holdsPersonalData)) throw new Error('This process cannot seal personal data (no PersonalData on its connection: no KEEL_KEK), so it does not publish events that hold some.');
    return events;
  }
  const out = await m.personalData.seal(events, tx);
  for (let i = 0; i < out.length; i++) if (out[i] !== events[i]) checkSealed(out[i]!);
  return out;
}

/** Facts sealed at a time on the fact path. */
const FACT_SEAL_CHUNK = 256;

/** The aggregate moved on since it was loaded: reload and decide again. */
export class ConcurrencyConflict extends Error {
  constructor(readonly subject: string, readonly expected: number) {
    super(`${subject} is no longer at stream sequence ${expected}`);
    this.name = 'ConcurrencyConflict';
  }
}

export const CORRELATION_HEADER = 'Keel-Correlation-Id';

function isWrongLastSequence(error: unknown): boolean {
  const e = error as { api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10071 || /wrong last sequence/i.test(String(e?.message));
}

/** No answer from the server (timeout, no responders, a connection going away): worth a retry. */
function isUnanswered(error: unknown): boolean {
  const e = error as { code?: string; api_error?: { err_code?: number } };
  return ['TIMEOUT', '503', 'DISCONNECT', 'CONNECTION_REFUSED', 'CONNECTION_CLOSED'].includes(String(e?.code)) || e?.api_error?.err_code === 10158;
}

/** The event log on JetStream: optimistic appends per aggregate subject and reads back. */
export class EventStore {
  private readonly js: JetStreamClient;
  /** Direct get (stream `allow_direct`): served by any replica, no consumer needed. */
  private readonly direct: DirectStreamAPI;
  private readonly jsm: JetStreamManager;

  constructor(private readonly m: Messaging) {
    this.js = m.js;
    this.jsm = m.jsm;
    // The manager has `direct` at run time; nats.js 2.x leaves it out of the interface.
    this.direct = (m.jsm as JetStreamManager & { direct: DirectStreamAPI }).direct;
  }

  subjectOf(e: Pick<EventEnvelope, 'tenantId' | 'type' | 'aggregateType' | 'aggregateId'>): string {
    return eventSubject(this.m.prefix, e);
  }

  /**
   * Appends the events of one decision on one aggregate. `expectedLastPosition` is the stream
   * sequence of the aggregate's last message (0: the aggregate has none yet). Every event is
   * validated first; a publish retried after a lost ack is stored once (`Nats-Msg-Id`) and
   * answers the same position.
   *
   * A decision of several events is one message: a JSON array of their envelopes, stored whole
   * or not at all (nats-server 2.9 has no atomic batch publish), so no reader ever sees half of
   * it. Its events share that message's stream sequence as their position; readers here, in the
   * consumers and in the ledger's replay, hand them out one by one, in order.
   */
  async append(events: EventEnvelope[], expectedLastPosition: number): Promise<number[]> {
    if (!events.length) return [];
    for (const e of events) { validateEnvelope(e); validateEventBody(e); }
    // What was validated, with its personal fields sealed: the log holds only their ciphertext.
    events = await sealed(this.m, events);
    const subject = this.subjectOf(events[0]!);
    for (const e of events) {
      if (this.subjectOf(e) !== subject) throw new Error(`one decision appends to one aggregate: ${this.subjectOf(e)} is not ${subject}`);
    }
    const deadline = Date.now() + Math.max(200, Math.floor(this.m.requestTimeoutMs * 0.6));
    const h = natsHeaders();
    injectTraceContext(h);
    h.set(CORRELATION_HEADER, events[0]!.correlationId);
    const data = encodeJson(events.length === 1 ? events[0]! : events);
    this.checkSize(data.length);
    const ack = await this.publish(subject, data, events[0]!.id, expectedLastPosition, h, deadline);
    return events.map(() => ack.seq);
  }

  /**
   * The fact path: appends facts that need no optimistic check (usage records, heartbeats), each
   * its own message on its own subject, all publishes in flight at once (pipelined, up to `window`
   * unacknowledged). `Nats-Msg-Id` = the fact's id, so a retried fact inside the stream's duplicate
   * window is stored once and answers its first position; counting each fact exactly once beyond
   * that window is the consumer's job (a unique key where it is applied). Resolves with each fact's
   * position, in the order given; a fact the log refuses rejects the whole call after the others
   * were tried (their positions are then unknown to the caller: retry them all, the ids dedupe).
   * Each publish has its own deadline (a share of the request timeout) from when it starts.
   */
  async appendFacts(facts: EventEnvelope[], window = 1_024): Promise<number[]> {
    for (const f of facts) {
      validateEnvelope(f);
      validateEventBody(f);
    }
    // Sealed a chunk at a time, as the lanes reach it: publishing starts after the first chunk, not
    // after the whole batch (sealing is CPU on the thread that publishes). A seal that fails (the key
    // owner away) rejects the call like a refused publish: retry it all, the ids dedupe.
    const ready = new Array<EventEnvelope>(facts.length);
    let sealedTo = 0;
    let sealing: Promise<void> | undefined;
    let sealFailure: unknown;
    const sealThrough = async (i: number) => {
      while (i >= sealedTo) {
        // Once a seal failed, nothing more is sealed or published (what went out is retried with the rest).
        if (sealFailure) throw sealFailure;
        sealing ??= (async () => {
          const from = sealedTo;
          try {
            const chunk = await sealed(this.m, facts.slice(from, from + FACT_SEAL_CHUNK));
            chunk.forEach((f, j) => (ready[from + j] = f));
            sealedTo = from + chunk.length;
          } catch (error) {
            sealFailure = error;
            throw error;
          }
        })().finally(() => (sealing = undefined));
        await sealing;
      }
    };
    // Each fact has its own deadline from when its publish starts: a large batch is not one deadline.
    const budget = Math.max(200, Math.floor(this.m.requestTimeoutMs * 0.6));
    const positions = new Array<number>(facts.length);
    let next = 0;
    let failure: unknown;
    const lane = async () => {
      while (next < facts.length) {
        const i = next++;
        try {
          await sealThrough(i);
        } catch (error) {
          failure ??= error;
          return;
        }
        const fact = ready[i]!;
        const h = natsHeaders();
        injectTraceContext(h);
        h.set(CORRELATION_HEADER, fact.correlationId);
        try {
          positions[i] = (await this.publishFact(this.subjectOf(fact), fact, h, Date.now() + budget)).seq;
        } catch (error) {
          failure ??= error;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, facts.length) }, lane));
    if (failure) throw failure;
    return positions;
  }

  /** A message larger than the server takes can never be stored: that is the caller's input, not an outage. */
  private checkSize(bytes: number): void {
    const max = this.m.nc.info?.max_payload ?? 1024 * 1024;
    if (bytes > max - 1024) {
      throw new KeelError('payload_too_large', `The event (${bytes} bytes) is larger than the event log takes (${max} bytes); send less data.`);
    }
  }

  private async publishFact(subject: string, fact: EventEnvelope, h: MsgHdrs, deadline: number): Promise<PubAck> {
    const data = encodeJson(fact);
    this.checkSize(data.length);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.js.publish(subject, data, { msgID: fact.id, headers: h, timeout: Math.max(50, deadline - Date.now()) });
      } catch (error) {
        const unanswered = isUnanswered(error);
        if (!unanswered || Date.now() + 50 >= deadline) {
          throw new KeelError('service_unavailable', `The event log did not accept the fact${unanswered ? ` after ${attempt} attempts` : ''}: ${(error as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, Math.min(50 * attempt, 250)));
      }
    }
  }

  /**
   * One publish, retried while the server does not answer (a restart, a lost ack) with the
   * same `Nats-Msg-Id`: a copy that did land answers as a duplicate with its first sequence,
   * so a retry never stores the event twice. Only "no answer" is retried; a refusal is final.
   * The whole append shares one deadline, well inside the caller's request timeout.
   */
  private async publish(subject: string, data: Uint8Array, msgID: string, expected: number, h: MsgHdrs, deadline: number): Promise<PubAck> {
    const attemptTimeout = Math.max(100, Math.floor(this.m.requestTimeoutMs / 5));
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.js.publish(subject, data, {
          msgID,
          expect: { lastSubjectSequence: expected },
          headers: h,
          timeout: Math.min(attemptTimeout, Math.max(50, deadline - Date.now())),
        });
      } catch (error) {
        if (isWrongLastSequence(error)) throw new ConcurrencyConflict(subject, expected);
        const unanswered = isUnanswered(error);
        if (!unanswered || Date.now() + 50 >= deadline) {
          throw new KeelError('service_unavailable', `The event log did not accept the event${unanswered ? ` after ${attempt} attempts` : ''}: ${(error as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, Math.min(50 * attempt, 250)));
      }
    }
  }

  /**
   * Every event of one aggregate after `afterPosition`, in order, with the personal fields of their
   * bodies opened (`"[erased]"` once their subject is; the actor's stay sealed: a decider has no use
   * for an address).
   */
  async readSubject(subject: string, afterPosition = 0): Promise<PositionedEvent[]> {
    const events = await this.readSubjectSealed(subject, afterPosition);
    return this.m.personalData ? this.m.personalData.openPositioned(events) : events;
  }

  private async readSubjectSealed(subject: string, afterPosition: number): Promise<PositionedEvent[]> {
    const out: PositionedEvent[] = [];
    let next = afterPosition + 1;
    for (;;) {
      let msg: StoredMsg;
      try {
        msg = await this.direct.getMessage(this.m.stream, { seq: next, next_by_subj: subject });
      } catch (error) {
        if (isNotFound(error)) return out;
        throw error;
      }
      for (const event of eventsOf(decodeJson(msg.data))) out.push({ position: msg.seq, event });
      next = msg.seq + 1;
    }
  }

  /**
   * The stored message at a stream sequence, or null if there is none: `events` are its envelopes
   * (several for a decision of several events), `event` the first of them (or, for a message that is
   * not an envelope, whatever it holds).
   */
  async readPosition(position: number): Promise<{ event: unknown; events: unknown[]; headers?: MsgHdrs } | null> {
    try {
      const msg = await this.direct.getMessage(this.m.stream, { seq: position });
      const decoded = decodeJson(msg.data);
      const events = Array.isArray(decoded) ? decoded : [decoded];
      return { event: events[0], events, headers: msg.header };
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  /** The stored bytes at a stream sequence, undecoded, or null if there is none. */
  async readRawPosition(position: number): Promise<{ subject: string; data: Uint8Array } | null> {
    try {
      const msg = await this.direct.getMessage(this.m.stream, { seq: position });
      return { subject: msg.subject, data: msg.data };
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  /** The stream's last sequence (0 when empty). */
  async lastPosition(): Promise<number> {
    const info = await this.jsm.streams.info(this.m.stream);
    return info.state.last_seq;
  }
}
