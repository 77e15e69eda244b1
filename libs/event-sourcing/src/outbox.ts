import { headers as natsHeaders, PubAck } from 'nats';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import { CommandMeta, EventEnvelope, eventSubject, KeelError, nameBasedUuid, newEventId, validateEnvelope, validateEventBody } from '@keel/contracts';
import { AdvisoryLeadership, tenantPolicySql } from '@keel/database';
import { CORRELATION_HEADER, Messaging, sealed } from '@keel/messaging';

/**
 * A transactional outbox for state-stored aggregates (ARCHITECTURE.md §5): the row change and
 * its event commit in one Postgres transaction (`add` inside the caller's transaction), and a
 * relay publishes what was committed, in outbox order, with `Nats-Msg-Id` = the event id, then
 * records the stream position. Nothing is published from inside a transaction and no
 * transaction is held across a publish: the relay reads a batch, publishes it pipelined, and
 * marks it sent in a separate short statement. A crash between publish and mark republishes;
 * the stream's duplicate window and the event id make that a no-op.
 *
 * A decision's events of one aggregate (one `add` or `record` call) are one entry and one stream
 * message, a JSON array of their envelopes, as `EventStore.append` publishes them (nats-server 2.9
 * has no atomic batch publish): every reader gets all of them or none, at one stream position, on
 * that aggregate's subject. A decision that touches several aggregates (a user's sessions revoked
 * at once) is one entry per aggregate, committed together and published in outbox order,
 * pipelined: a reader can see some of them a moment before the rest, and all of them land (the
 * entries are durable). Should one publish of a round fail while a later one succeeds, the failed
 * one lands at the next round, after it: per aggregate the order always holds (one aggregate's
 * events are one entry, or entries of successive commands waiting on its row lock).
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The statements a service's migration runs to create its outbox (RLS as every tenant table). */
export function outboxTablesSql(schema: string, role: string): string[] {
  const s = `"${schema}"`;
  return [
    `CREATE TABLE ${s}.outbox (
      seq bigserial PRIMARY KEY,
      event_id uuid NOT NULL,
      tenant_id text NOT NULL,
      subject text NOT NULL,
      envelope json NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      sent_at timestamptz,
      position bigint,
      CONSTRAINT outbox_event_id UNIQUE (event_id))`,
    `CREATE INDEX outbox_unsent ON ${s}.outbox (seq) WHERE sent_at IS NULL`,
    // For aggregates whose row is deleted and whose id can come back (a role's name): the
    // version lives on after the row.
    `CREATE TABLE ${s}.outbox_versions (
      tenant_id text NOT NULL, aggregate_type text NOT NULL, aggregate_id text NOT NULL, version integer NOT NULL,
      PRIMARY KEY (tenant_id, aggregate_type, aggregate_id))`,
    ...tenantPolicySql(schema, 'outbox'),
    ...tenantPolicySql(schema, 'outbox_versions'),
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ${s}.outbox, ${s}.outbox_versions TO ${role}`,
    `GRANT USAGE ON SEQUENCE ${s}.outbox_seq_seq TO ${role}`,
  ];
}

/** An event of a state-stored aggregate, before it is wrapped in an envelope. */
export interface OutboxEvent {
  tenantId: string;
  aggregateType: string;
  aggregateId: string;
  /** The aggregate's version after this event (from its row, incremented in the same transaction). */
  version: number;
  type: string;
  data: Record<string, unknown>;
  schemaVersion?: number;
}

/** A UUID (version 8, RFC 9562) derived from a command id: a retried command yields the same event ids. */
export function derivedEventId(commandId: string, tenantId: string, type: string, index: number): string {
  return nameBasedUuid(`keel.outbox\u0000${tenantId}\u0000${commandId}\u0000${type}\u0000${index}`);
}

/** The envelope of an outbox event; `index` numbers the events of one command (for derived ids). */
export function outboxEnvelope(e: OutboxEvent, meta: CommandMeta, index = 0): EventEnvelope {
  const commandId = (meta as CommandMeta & { commandId?: string }).commandId;
  return {
    id: commandId ? derivedEventId(commandId, e.tenantId, e.type, index) : newEventId(),
    type: e.type,
    schemaVersion: e.schemaVersion ?? 1,
    tenantId: e.tenantId,
    aggregateType: e.aggregateType,
    aggregateId: e.aggregateId,
    aggregateVersion: e.version,
    occurredAt: new Date().toISOString(),
    actor: meta.actor,
    correlationId: meta.correlationId,
    causationId: meta.correlationId,
    data: e.data,
  };
}

/** What `add` wrote: the entries to wait for. */
export interface OutboxReceipt {
  eventIds: string[];
  envelopes: EventEnvelope[];
  /** The entries (one per decision: its first event's id, the message's `Nats-Msg-Id`). */
  entryIds: string[];
}

/** The entries are on the stream: where each landed, and the last of them. */
export interface OutboxSent {
  positions: number[];
  position: number;
}

/** One outbox row as a caller embeds it in its own statement (see `prepare`). */
export interface PreparedEntry {
  eventId: string;
  tenantId: string;
  subject: string;
  envelope: string;
}

export interface OutboxLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface OutboxOptions {
  /**
   * A pool whose connections carry the cross-tenant scope (`openDataSource({ scope: ALL_TENANTS })`):
   * the relay reads and marks every tenant's entries, and listens for commits.
   */
  relayDs: DataSource;
  messaging: Messaging;
  /** The owning service's schema (the table is `"<schema>".outbox`). */
  schema: string;
  logger?: OutboxLogger;
  /** Entries read and published per round (pipelined). */
  batchSize?: number;
  /** The backstop poll when no wake-up arrives. */
  pollMs?: number;
  /** How long `sent` waits by default before answering service_unavailable. */
  waitMs?: number;
  /** Sent entries are deleted after this long. */
  retentionMs?: number;
  /** How often a standby tries to take the relay over. */
  leadershipPollMs?: number;
}

export interface OutboxHealth {
  name: string;
  running: boolean;
  leader: boolean;
  healthy: boolean;
  lastSentAt: string | null;
  lastError: string | null;
  failingSince: string | null;
}

interface Row {
  seq: string;
  event_id: string;
  subject: string;
  envelope: string;
}

interface Waiter {
  resolve(position: number): void;
  reject(error: Error): void;
}

/** A failure streak longer than this makes the active relay unhealthy. */
const UNHEALTHY_AFTER_MS = 10_000;
const RECENT_LIMIT = 20_000;
/** How long the relay waits for an earlier entry's transaction to commit before it goes on without it. */
const GAP_WAIT_MS = 1_000;

export class Outbox {
  readonly table: string;
  private readonly versionsTable: string;
  private readonly wakeChannel: string;
  private readonly sentChannel: string;
  private readonly batchSize: number;
  private readonly pollMs: number;
  private readonly waitMs: number;
  private readonly retentionMs: number;
  private readonly leadership: AdvisoryLeadership;
  /** Event ids of entries added per open transaction, so derived ids stay distinct. */
  private readonly counts = new WeakMap<EntityManager, number>();
  private readonly waiters = new Map<string, Waiter[]>();
  /** Positions of entries this process sent lately: a writer that asks after the fact finds them here. */
  private readonly recent = new Map<string, number>();
  /**
   * Entries this relay has on the stream but could not mark sent yet (Postgres went away after the
   * publish): outbox seq → stream position. They are marked, not published again, while it leads, so
   * a mark that fails for longer than the stream's duplicate window does not publish an event twice.
   */
  private readonly unmarked = new Map<number, number>();
  private loop?: Promise<void>;
  private listener?: QueryRunner;
  private listenerRetry?: NodeJS.Timeout;
  private running = false;
  private stopped = true;
  private leading = false;
  private woken = false;
  private wakeUp?: () => void;
  private checkTimer?: NodeJS.Timeout;
  private checking = false;
  private lastSentAt: number | null = null;
  private lastError: string | null = null;
  private failingSince: number | null = null;
  private lastPrune = 0;
  /** The highest sequence this relay has sent (undefined: not read yet; null: none sent ever). */
  private lastSeq: number | null | undefined;
  private gap?: { seq: number; since: number };
  private gapPending = false;

  constructor(private readonly o: OutboxOptions) {
    this.table = `"${o.schema}".outbox`;
    this.versionsTable = `"${o.schema}".outbox_versions`;
    this.wakeChannel = `${o.schema}_outbox_wake`;
    this.sentChannel = `${o.schema}_outbox_sent`;
    this.batchSize = o.batchSize ?? 500;
    this.pollMs = o.pollMs ?? 1_000;
    this.waitMs = o.waitMs ?? Math.max(500, Math.floor(o.messaging.requestTimeoutMs * 0.6));
    this.retentionMs = o.retentionMs ?? 24 * 3600_000;
    this.leadership = new AdvisoryLeadership(o.relayDs, `keel.outbox.${o.messaging.stream}.${o.schema}`, o.leadershipPollMs ?? 1_000);
  }

  /** True while this process runs the active relay. */
  get isLeader(): boolean {
    return this.leading;
  }

  // ---- writing ----

  /**
   * Validates the envelopes, seals their personal data (`tx`: the caller's open transaction, where
   * the auth service's new data keys commit with what they seal) and turns them into rows, for a
   * caller that writes them in its own statement (`INSERT INTO <table> (event_id, tenant_id, subject, envelope) ...`).
   */
  async prepare(envelopes: EventEnvelope[], tx?: EntityManager): Promise<PreparedEntry[]> {
    const max = this.o.messaging.nc.info?.max_payload ?? 1024 * 1024;
    const checked = envelopes.map((input) => {
      const e = validateEnvelope(input);
      // Bodies are checked at publish as EventStore.append checks them: before the row is written,
      // so a publisher's bug rolls its whole transaction back.
      validateEventBody(e);
      return e;
    });
    return (await sealed(this.o.messaging, checked, tx)).map((e) => {
      const envelope = JSON.stringify(e);
      if (Buffer.byteLength(envelope) > max - 1024) {
        throw new KeelError('validation_failed', `The event is larger than the event log accepts (${max} bytes); send less data.`);
      }
      return { eventId: e.id, tenantId: e.tenantId, subject: eventSubject('', e), envelope };
    });
  }

  /** A NOTIFY for the statement that commits entries, unless this process's own relay hears it in-process. */
  notifySql(): string {
    return this.leading ? '' : `, pg_notify('${this.wakeChannel}', '')`;
  }

  /** Builds the envelopes of `events` for `meta` (numbered within the transaction) and adds them. */
  async record(m: EntityManager, events: OutboxEvent[], meta: CommandMeta): Promise<OutboxReceipt> {
    const first = this.counts.get(m) ?? 0;
    return this.add(m, events.map((e, i) => outboxEnvelope(e, meta, first + i)));
  }

  /**
   * Inside the caller's open transaction: the envelopes become outbox entries that commit (or
   * roll back) with the caller's own changes. After the commit, `sent` waits for them.
   */
  async add(m: EntityManager, envelopes: EventEnvelope[]): Promise<OutboxReceipt> {
    if (!envelopes.length) return { eventIds: [], envelopes: [], entryIds: [] };
    const rows = await this.prepareDecision(envelopes, m);
    this.counts.set(m, (this.counts.get(m) ?? 0) + envelopes.length);
    try {
      await m.query(
        `WITH i AS (
           INSERT INTO ${this.table} (event_id, tenant_id, subject, envelope)
           SELECT e.event_id, e.tenant_id, e.subject, e.envelope::json
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS e(event_id, tenant_id, subject, envelope, n)
           ORDER BY e.n RETURNING seq)
         SELECT count(*) AS n${this.notifySql()} FROM i`,
        [rows.map((r) => r.eventId), rows.map((r) => r.tenantId), rows.map((r) => r.subject), rows.map((r) => r.envelope)],
      );
    } catch (error) {
      if ((error as { code?: string; constraint?: string }).constraint === 'outbox_event_id') {
        throw new KeelError('conflict', 'This command was already applied (an event with its id exists).');
      }
      throw error;
    }
    return { eventIds: envelopes.map((e) => e.id), envelopes, entryIds: rows.map((r) => r.eventId) };
  }

  /**
   * A decision's entries: each run of consecutive events of one aggregate is one entry (a single
   * envelope as it is, several as one JSON array: one message, all or none), identified by its
   * first event's id.
   */
  private async prepareDecision(envelopes: EventEnvelope[], tx: EntityManager): Promise<PreparedEntry[]> {
    const prepared = await this.prepare(envelopes, tx);
    // One message per subject: every event stays findable under its own aggregate's subject.
    const key = (e: EventEnvelope) => eventSubject('', e);
    const runs: { entries: PreparedEntry[] }[] = [];
    envelopes.forEach((e, i) => {
      const last = runs[runs.length - 1];
      if (last && key(envelopes[i - 1]!) === key(e)) last.entries.push(prepared[i]!);
      else runs.push({ entries: [prepared[i]!] });
    });
    const max = this.o.messaging.nc.info?.max_payload ?? 1024 * 1024;
    return runs.map(({ entries }) => {
      if (entries.length === 1) return entries[0]!;
      const envelope = `[${entries.map((r) => r.envelope).join(',')}]`;
      if (Buffer.byteLength(envelope) > max - 1024) {
        throw new KeelError('payload_too_large', `These ${entries.length} events of one aggregate are together larger than the event log accepts as one message (${max} bytes); change less at once.`);
      }
      return { ...entries[0]!, envelope };
    });
  }

  /**
   * The next `count` versions of an aggregate whose row may be deleted and come back under the
   * same id: the counter outlives the row. Serialised per aggregate by the row lock it takes.
   * Returns the first of them.
   */
  async nextVersion(m: EntityManager, a: { tenantId: string; aggregateType: string; aggregateId: string }, count = 1): Promise<number> {
    const [row] = await m.query(
      `INSERT INTO ${this.versionsTable} AS v (tenant_id, aggregate_type, aggregate_id, version) VALUES ($1, $2, $3, $4)
       ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE SET version = v.version + EXCLUDED.version RETURNING version`,
      [a.tenantId, a.aggregateType, a.aggregateId, count],
    );
    return Number(row.version) - count + 1;
  }

  /**
   * After the commit: waits until the relay has the entries on the stream and answers their
   * positions. On timeout, service_unavailable: the entries are durable and will still be sent.
   */
  async sent(receipt: Pick<OutboxReceipt, 'entryIds'>, timeoutMs = this.waitMs): Promise<OutboxSent> {
    if (!receipt.entryIds.length) return { positions: [], position: 0 };
    this.wake();
    let timer: NodeJS.Timeout | undefined;
    const mine: [string, Waiter][] = [];
    const waits = receipt.entryIds.map(
      (id) =>
        new Promise<number>((resolve, reject) => {
          const known = this.recent.get(id);
          if (known !== undefined) return resolve(known);
          const w = { resolve, reject };
          mine.push([id, w]);
          const list = this.waiters.get(id);
          if (list) list.push(w);
          else this.waiters.set(id, [w]);
        }),
    );
    if (mine.length) this.scheduleCheck(this.leading ? 200 : 0);
    try {
      const positions = await Promise.race([
        Promise.all(waits),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new KeelError(
                  'service_unavailable',
                  `The change is saved, but its event did not reach the event log within ${timeoutMs} ms; it will be published, retry reading shortly.`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
      return { positions, position: Math.max(...positions) };
    } finally {
      clearTimeout(timer);
      for (const [id, w] of mine) this.dropWaiter(id, w);
    }
  }

  /** Nudges the local relay (a commit just happened). */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  private dropWaiter(id: string, w: Waiter): void {
    const list = this.waiters.get(id);
    if (!list) return;
    const rest = list.filter((x) => x !== w);
    if (rest.length) this.waiters.set(id, rest);
    else this.waiters.delete(id);
  }

  private settle(id: string, position: number): void {
    const list = this.waiters.get(id);
    if (!list) return;
    this.waiters.delete(id);
    for (const w of list) w.resolve(position);
  }

  private remember(id: string, position: number): void {
    this.recent.set(id, position);
    if (this.recent.size > RECENT_LIMIT) this.recent.delete(this.recent.keys().next().value!);
  }

  /**
   * Writers waiting for entries that another replica's relay sends: asks the table, right away
   * (a commit may already be sent), on every "sent" notice, and every 200 ms while anyone waits.
   */
  private scheduleCheck(delayMs: number): void {
    if (this.checkTimer || this.stopped) return;
    this.checkTimer = setTimeout(() => {
      this.checkTimer = undefined;
      void this.checkWaiters();
    }, delayMs);
  }

  private async checkWaiters(): Promise<void> {
    if (this.checking || !this.waiters.size) return;
    this.checking = true;
    try {
      const ids = [...this.waiters.keys()].slice(0, 5_000);
      const rows: { event_id: string; position: string }[] = await this.o.relayDs.query(
        `SELECT event_id::text, position FROM ${this.table} WHERE event_id = ANY($1::uuid[]) AND position IS NOT NULL`,
        [ids],
      );
      for (const r of rows) this.settle(r.event_id, Number(r.position));
    } catch (err) {
      this.o.logger?.warn({ err }, 'outbox: could not check sent entries');
    } finally {
      this.checking = false;
      if (this.waiters.size) this.scheduleCheck(200);
    }
  }

  // ---- the relay ----

  /** Starts listening and competing for the relay (one active replica per schema and stream). */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.stopped = false;
    await this.listen().catch((err) => {
      this.o.logger?.warn({ err }, 'outbox: LISTEN failed; relying on polls until it reconnects');
      this.retryListen();
    });
    this.loop = this.run();
  }

  /** Stops the relay (publishing what it holds first), gives up leadership, fails waiters. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.stopped = true;
    this.wake();
    clearTimeout(this.listenerRetry);
    clearTimeout(this.checkTimer);
    this.checkTimer = undefined;
    await this.leadership.release();
    await this.loop;
    this.running = false;
    const listener = this.listener;
    this.listener = undefined;
    if (listener) {
      await listener.query('UNLISTEN *').catch(() => undefined);
      await listener.release().catch(() => undefined);
    }
    for (const [id, list] of this.waiters) {
      this.waiters.delete(id);
      for (const w of list) w.reject(new KeelError('service_unavailable', 'The service is stopping; the change is saved and its event will be published.'));
    }
  }

  health(): OutboxHealth {
    const failing = this.failingSince !== null && Date.now() - this.failingSince > UNHEALTHY_AFTER_MS;
    return {
      name: `${this.o.schema}.outbox`,
      running: this.running,
      leader: this.leading,
      healthy: this.running && (!this.leading || !failing),
      lastSentAt: this.lastSentAt === null ? null : new Date(this.lastSentAt).toISOString(),
      lastError: this.lastError,
      failingSince: this.failingSince === null ? null : new Date(this.failingSince).toISOString(),
    };
  }

  /** Entries not yet on the stream (all tenants). */
  async backlog(): Promise<number> {
    const [row] = await this.o.relayDs.query(`SELECT count(*)::int AS n FROM ${this.table} WHERE sent_at IS NULL`);
    return Number(row.n);
  }

  private async listen(): Promise<void> {
    const runner = this.o.relayDs.createQueryRunner();
    const client = (await runner.connect()) as {
      on(event: 'notification', fn: (msg: { channel: string }) => void): void;
      on(event: 'error' | 'end', fn: (err?: Error) => void): void;
    };
    client.on('notification', (msg) => {
      if (msg.channel === this.wakeChannel) this.wake();
      else if (msg.channel === this.sentChannel && !this.leading) void this.checkWaiters();
    });
    const lost = (err?: Error) => {
      if (this.listener !== runner || this.stopped) return;
      this.o.logger?.warn({ err }, 'outbox: LISTEN connection lost; reconnecting');
      this.listener = undefined;
      void runner.release().catch(() => undefined);
      this.retryListen();
    };
    client.on('error', lost);
    client.on('end', lost);
    await runner.query(`LISTEN "${this.wakeChannel}"`);
    await runner.query(`LISTEN "${this.sentChannel}"`);
    this.listener = runner;
    // Something may have been committed while nobody listened.
    this.wake();
    if (this.waiters.size) this.scheduleCheck(0);
  }

  private retryListen(): void {
    if (this.stopped) return;
    clearTimeout(this.listenerRetry);
    this.listenerRetry = setTimeout(() => {
      void this.listen().catch((err) => {
        this.o.logger?.warn({ err }, 'outbox: LISTEN reconnect failed');
        this.retryListen();
      });
    }, 1_000);
    this.listenerRetry.unref();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.leadership.acquire();
      } catch (err) {
        if (this.stopped) break;
        this.o.logger?.warn({ err }, 'outbox: could not take the relay over');
        await sleep(this.pollMs);
        continue;
      }
      this.leading = true;
      this.lastSeq = undefined;
      this.gap = undefined;
      this.unmarked.clear();
      this.o.logger?.info({ outbox: this.table }, 'outbox relay active');
      try {
        await this.lead();
      } catch (err) {
        this.o.logger?.error({ err }, 'outbox relay stopped leading after an error');
      } finally {
        this.leading = false;
      }
      if (!this.stopped) {
        await this.leadership.release();
        await sleep(this.pollMs);
      }
    }
  }

  private async lead(): Promise<void> {
    let confirmed = Date.now();
    let backoff = 0;
    for (;;) {
      let full = false;
      try {
        full = (await this.drain()) === this.batchSize;
        backoff = 0;
      } catch (err) {
        this.noteFailure(err);
        backoff = Math.min(backoff ? backoff * 2 : 100, 2_000);
      }
      // Stopping: what was read is published and marked; the next leader takes the rest.
      if (this.stopped) return;
      if (Date.now() - confirmed > 5_000) {
        if (!(await this.leadership.stillHeld())) return;
        confirmed = Date.now();
      }
      if (Date.now() - this.lastPrune > 60_000) await this.prune();
      if (backoff) await sleep(backoff);
      // A gap fills when its transaction commits, and that writer wakes the relay: wait for
      // it, but not long (it may have rolled back, or committed on another replica).
      else if (this.gapPending) await this.idle(20);
      else if (!full) await this.idle(this.pollMs);
    }
  }

  /** Waits for a wake-up (in-process or NOTIFY) or the backstop poll. */
  private idle(ms: number): Promise<void> {
    if (this.woken || this.stopped) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      // Cleared when it fires either way: a later wake-up must find none, not this one's leftover
      // (which would swallow it while a drain runs).
      const done = () => {
        clearTimeout(timer);
        if (this.wakeUp === done) this.wakeUp = undefined;
        this.woken = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  private noteFailure(err: unknown): void {
    this.lastError = (err as Error)?.message ?? String(err);
    this.failingSince ??= Date.now();
    this.o.logger?.warn({ err }, 'outbox: publishing failed; retrying');
  }

  /**
   * One round: the oldest unsent entries, published pipelined, then the prefix that the stream
   * acknowledged marked sent with its positions (a failure stops there, so order is kept: the
   * rest is published again, and what did land is answered as a duplicate with its position).
   */
  async drain(): Promise<number> {
    this.woken = false;
    this.gapPending = false;
    if (this.lastSeq === undefined) {
      const [last] = await this.o.relayDs.query(`SELECT max(seq) AS seq FROM ${this.table} WHERE sent_at IS NOT NULL`);
      this.lastSeq = last?.seq == null ? null : Number(last.seq);
    }
    const read: Row[] = await this.o.relayDs.query(
      `SELECT seq, event_id::text, subject, envelope::text AS envelope FROM ${this.table} WHERE sent_at IS NULL ORDER BY seq LIMIT $1`,
      [this.batchSize],
    );
    // Sequence numbers are taken at insert and become visible at commit: a gap is an entry whose
    // transaction has not committed yet (or rolled back). Wait for it a little, so the stream
    // gets the outbox order; an entry later than that is published when it appears.
    const rows: Row[] = [];
    let cursor = this.lastSeq;
    for (const r of read) {
      const seq = Number(r.seq);
      if (cursor !== null && seq > cursor + 1) {
        if (this.gap?.seq !== cursor + 1) this.gap = { seq: cursor + 1, since: Date.now() };
        if (Date.now() - this.gap.since < GAP_WAIT_MS) {
          this.gapPending = true;
          break;
        }
        this.gap = undefined;
      }
      rows.push(r);
      cursor = cursor === null ? seq : Math.max(cursor, seq);
    }
    if (!rows.length) {
      if (!this.gapPending) this.failingSince = null;
      return 0;
    }
    const timeout = Math.max(1_000, Math.floor(this.o.messaging.requestTimeoutMs / 2));
    // All in flight at once on one connection: the stream stores them in the order sent, which is
    // the outbox order. Entries already on the stream but not marked are not sent again.
    const acks = await Promise.allSettled(
      rows.map((r) => {
        const known = this.unmarked.get(Number(r.seq));
        return known !== undefined ? Promise.resolve({ seq: known } as PubAck) : this.publish(r, timeout);
      }),
    );
    let ok = 0;
    while (ok < acks.length && acks[ok]!.status === 'fulfilled') ok++;
    const done = rows.slice(0, ok);
    const positions = acks.slice(0, ok).map((a) => (a as PromiseFulfilledResult<PubAck>).value.seq);
    // Published but not in the marked prefix, or the mark below fails: remembered, not republished.
    acks.forEach((a, i) => {
      if (a.status === 'fulfilled' && this.unmarked.size < 100_000) this.unmarked.set(Number(rows[i]!.seq), a.value.seq);
    });
    // Acknowledged means on the stream: the writers here are answered now, before the mark (if
    // the mark is lost, the entries are published again and answer as duplicates).
    done.forEach((r, i) => {
      this.remember(r.event_id, positions[i]!);
      this.settle(r.event_id, positions[i]!);
    });
    if (done.length) {
      await this.o.relayDs.query(
        `WITH u AS (
           UPDATE ${this.table} o SET sent_at = now(), position = v.position
           FROM unnest($1::bigint[], $2::bigint[]) AS v(seq, position) WHERE o.seq = v.seq RETURNING o.seq)
         SELECT count(*) AS n, pg_notify('${this.sentChannel}', '') FROM u`,
        [done.map((r) => r.seq), positions],
      );
      for (const r of done) this.unmarked.delete(Number(r.seq));
      this.lastSentAt = Date.now();
      this.lastSeq = Math.max(this.lastSeq ?? 0, ...done.map((r) => Number(r.seq)));
    }
    if (ok < rows.length) throw (acks[ok] as PromiseRejectedResult).reason;
    this.failingSince = null;
    this.lastError = null;
    return rows.length;
  }

  private publish(r: Row, timeout: number): Promise<PubAck> {
    const h = natsHeaders();
    try {
      // One envelope, or a decision's array of them (which share the command's correlation id).
      const decoded = JSON.parse(r.envelope) as { correlationId?: string } | { correlationId?: string }[];
      const correlationId = (Array.isArray(decoded) ? decoded[0] : decoded)?.correlationId;
      if (correlationId) h.set(CORRELATION_HEADER, correlationId);
    } catch {
      // validated at add: cannot happen, and the header is optional
    }
    return this.o.messaging.js.publish(`${this.o.messaging.prefix}${r.subject}`, Buffer.from(r.envelope), { msgID: r.event_id, headers: h, timeout });
  }

  private async prune(): Promise<void> {
    this.lastPrune = Date.now();
    await this.o.relayDs
      .query(
        // Oldest first along the primary key (no index of its own to keep up on every send).
        `DELETE FROM ${this.table} WHERE seq IN (
           SELECT seq FROM ${this.table} WHERE sent_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT 5000)`,
        [this.retentionMs / 1000],
      )
      .catch((err) => this.o.logger?.warn({ err }, 'outbox: pruning sent entries failed'));
  }
}

/** Readiness of an outbox relay: a standby is ready; the active relay while it publishes. */
export const outboxCheck = (outbox: Outbox) => ({
  name: 'outbox',
  check: async () => ({ ok: outbox.health().healthy, detail: outbox.health() }),
});
