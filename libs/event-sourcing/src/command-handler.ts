import { CommandMeta, EventEnvelope, KeelError, nameBasedUuid, newEventId } from '@keel/contracts';
import { ConcurrencyConflict, EventStore } from '@keel/messaging';
import { Decider, DomainEvent, Recorded } from './decider';

/**
 * A UUID (version 8, RFC 9562) derived from SHA-256 of `parts`: the same parts give the same
 * id in every process and after every restart. Used for the ids a command derives from its
 * `commandId` (its events' ids, a created aggregate's id).
 */
export function deterministicUuid(...parts: string[]): string {
  return nameBasedUuid(parts.join('\n'));
}

/**
 * The id of the aggregate a create command with `commandId` makes, so a retry finds the same
 * one; `scope` (say the tenant) keeps one command id from naming the same id in two places.
 */
export function aggregateIdFor(commandId: string, aggregateType: string, ...scope: string[]): string {
  return deterministicUuid('keel.aggregate', aggregateType, ...scope, commandId);
}

/** Command ids an aggregate remembers (with the outcome of each), newest kept. */
export const REMEMBERED_COMMANDS = 100;

export interface AggregateTarget {
  tenantId: string;
  aggregateId: string;
}

export interface AggregateSpec<State, Command, Event extends DomainEvent> {
  context: string;
  aggregateType: string;
  decider: Decider<State, Command, Event>;
  /** Current schema version of each event type (1 when absent). */
  schemaVersions?: Partial<Record<string, number>>;
  /** Turns an event stored in an older schema version into the current shape. */
  upcast?(event: EventEnvelope): EventEnvelope;
  /** Appends attempted before a conflict is answered with 409. */
  maxAttempts?: number;
  /** Aggregates kept in memory between commands (the optimistic check keeps them honest). */
  cacheSize?: number;
  /**
   * Event types after which the aggregate's remembered outcomes are dropped (a person's erasure):
   * a retried command is then answered from the state after it, never an earlier state's copy.
   */
  forgets?: readonly string[];
}

export interface Loaded<State> {
  state: State;
  version: number;
  position: number;
}

export interface HandledCommand<State> {
  state: State;
  version: number;
  position: number;
  /** The events this call appended: none when the decision had none, or the command was applied before. */
  events: EventEnvelope[];
}

/** What a command left the aggregate at: answered again to a retry of the same command id. */
interface Outcome<State> {
  state: State;
  version: number;
  position: number;
}

/** An aggregate in memory: its state and the outcomes of the last command ids found in its log. */
interface Entry<State> extends Loaded<State> {
  commands: Map<string, Outcome<State>>;
}

/**
 * Load → decide → append with the aggregate's last stream sequence as the expected one.
 * A conflict reloads from the log and decides again, a bounded number of times.
 *
 * A command with `meta.commandId` is applied at most once: its events carry the id (and have
 * ids derived from it, so a republish inside the stream's duplicate window is stored once), the
 * aggregate remembers the last REMEMBERED_COMMANDS command ids of its log with the outcome of
 * each, and a command whose id is among them answers that outcome without deciding again —
 * in any replica, after any restart, since it comes from the log.
 */
export class CommandHandler<State, Command, Event extends DomainEvent> {
  private readonly cache = new Map<string, Entry<State>>();
  /** Commands on one aggregate run one after another in this process; replicas rely on the check. */
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly maxAttempts: number;
  private readonly cacheSize: number;

  constructor(
    private readonly store: EventStore,
    private readonly spec: AggregateSpec<State, Command, Event>,
  ) {
    this.maxAttempts = spec.maxAttempts ?? 8;
    this.cacheSize = spec.cacheSize ?? 10_000;
  }

  private subject(t: AggregateTarget): string {
    return this.store.subjectOf({
      tenantId: t.tenantId,
      type: `${this.spec.context}.x.x`,
      aggregateType: this.spec.aggregateType,
      aggregateId: t.aggregateId,
    });
  }

  /** The aggregate as the log has it now. */
  async load(target: AggregateTarget): Promise<Loaded<State>> {
    const { state, version, position } = await this.loadEntry(this.subject(target));
    return { state, version, position };
  }

  private empty(): Entry<State> {
    return { state: this.spec.decider.initialState(), version: 0, position: 0, commands: new Map() };
  }

  private async loadEntry(key: string): Promise<Entry<State>> {
    const base = this.cache.get(key) ?? this.empty();
    const newer = await this.store.readSubject(key, base.position);
    if (newer.length === 0) return base;
    let { state, version, position } = base;
    const commands = base.commands; // superseded by the entry made here, so it may grow in place
    for (const { position: p, event } of newer) {
      const e = this.spec.upcast ? this.spec.upcast(event) : event;
      state = this.spec.decider.evolve(state, { type: e.type, data: e.data, occurredAt: e.occurredAt } as Recorded<Event>);
      version = e.aggregateVersion;
      position = p;
      if (this.spec.forgets?.includes(e.type)) commands.clear();
      // The last event of a command's decision holds its outcome (each event overwrites the one before).
      if (event.commandId) recordOutcome(commands, event.commandId, { state, version, position });
    }
    const loaded = { state, version, position, commands };
    this.remember(key, loaded);
    return loaded;
  }

  /**
   * Handles a command. `fresh` says the aggregate id was just generated, so there is nothing
   * to load (its first append still checks that the subject is empty).
   */
  async handle(target: AggregateTarget, command: Command, meta: CommandMeta, fresh = false): Promise<HandledCommand<State>> {
    const key = this.subject(target);
    const previous = this.queues.get(key) ?? Promise.resolve();
    const run = previous.then(
      () => this.decideAndAppend(key, target, command, meta, fresh),
      () => this.decideAndAppend(key, target, command, meta, fresh),
    );
    const settled = run.catch(() => undefined);
    this.queues.set(key, settled);
    void settled.then(() => {
      if (this.queues.get(key) === settled) this.queues.delete(key);
    });
    return run;
  }

  private async decideAndAppend(
    key: string,
    target: AggregateTarget,
    command: Command,
    meta: CommandMeta,
    fresh: boolean,
  ): Promise<HandledCommand<State>> {
    const { commandId } = meta;
    for (let attempt = 1; ; attempt++) {
      // An id derived from a command id is not fresh: a retry of that command finds it in the log.
      const cached = fresh && attempt === 1 && !commandId ? this.empty() : this.cache.get(key);
      const current: Entry<State> = cached ?? (await this.loadEntry(key));
      if (commandId) {
        const done = current.commands.get(commandId);
        if (done) return { ...done, events: [] };
      }
      if (meta.expectedVersion !== undefined && meta.expectedVersion !== current.version) {
        // A stale cache must not answer 412: check against the log before refusing.
        const fromLog = await this.loadEntry(key);
        const done = commandId ? fromLog.commands.get(commandId) : undefined;
        if (done) return { ...done, events: [] };
        if (meta.expectedVersion !== fromLog.version) {
          throw new KeelError(
            'version_mismatch',
            `The resource is at version ${fromLog.version}, not ${meta.expectedVersion}; fetch it again and retry.`,
          );
        }
        continue;
      }
      // Nothing to do, or refused, judged on the state in memory: another process (or handler) may
      // have moved the aggregate since, and no append will check it. Judged again on the log's newest state.
      const stale = async () => !!cached && cached.position > 0 && (await this.loadEntry(key)).position !== current.position;
      let domainEvents: Event[];
      try {
        domainEvents = this.spec.decider.decide(command, current.state);
      } catch (error) {
        if (await stale()) continue;
        throw error;
      }
      if (domainEvents.length === 0) {
        if (await stale()) continue;
        return { state: current.state, version: current.version, position: current.position, events: [] };
      }
      const envelopes = domainEvents.map((e, i) => this.envelope(key, target, e, i, current.version + i + 1, meta));
      try {
        const positions = await this.store.append(envelopes, current.position);
        if (commandId && !(await this.storedAsSent(envelopes, positions))) {
          // The log answered with events an earlier run of this command stored (inside the duplicate
          // window, a republish of the same event id is acknowledged with the first copy's position):
          // that run's outcome is the answer, as the log has it.
          this.cache.delete(key);
          const fromLog = await this.loadEntry(key);
          const done = fromLog.commands.get(commandId);
          return { ...(done ?? { state: fromLog.state, version: fromLog.version, position: fromLog.position }), events: [] };
        }
        let state = current.state;
        envelopes.forEach((env, i) => (state = this.spec.decider.evolve(state, { ...domainEvents[i]!, occurredAt: env.occurredAt } as Recorded<Event>)));
        const next = { state, version: current.version + domainEvents.length, position: positions[positions.length - 1]! };
        if (domainEvents.some((e) => this.spec.forgets?.includes(e.type))) current.commands.clear();
        if (commandId) recordOutcome(current.commands, commandId, next);
        this.remember(key, { ...next, commands: current.commands });
        return { ...next, events: envelopes };
      } catch (error) {
        if (!(error instanceof ConcurrencyConflict)) throw error;
        this.cache.delete(key);
        if (attempt >= this.maxAttempts) {
          throw new KeelError('concurrent_modification', 'The resource is being changed concurrently; retry the request.');
        }
      }
    }
  }

  /** Whether the log holds, at `positions`, the very events of this run (not an earlier run's with the same ids). */
  private async storedAsSent(envelopes: EventEnvelope[], positions: number[]): Promise<boolean> {
    // The events of one decision are one message: read each distinct position once, in order.
    const stored = await Promise.all([...new Set(positions)].map((p) => this.store.readPosition(p)));
    const events = stored.flatMap((s) => (s ? s.events : [undefined])) as (Partial<EventEnvelope> | undefined)[];
    return events.length === envelopes.length && events.every((e, i) => e?.id === envelopes[i]!.id && e?.occurredAt === envelopes[i]!.occurredAt && e?.correlationId === envelopes[i]!.correlationId);
  }

  private envelope(key: string, t: AggregateTarget, e: Event, index: number, aggregateVersion: number, meta: CommandMeta): EventEnvelope {
    return {
      // From a command id: the same command's events have the same ids however often it is retried.
      id: meta.commandId ? deterministicUuid('keel.event', key, meta.commandId, String(index)) : newEventId(),
      type: e.type,
      schemaVersion: this.spec.schemaVersions?.[e.type] ?? 1,
      tenantId: t.tenantId,
      aggregateType: this.spec.aggregateType,
      aggregateId: t.aggregateId,
      aggregateVersion,
      occurredAt: new Date().toISOString(),
      actor: meta.actor,
      correlationId: meta.correlationId,
      causationId: meta.correlationId,
      ...(meta.commandId ? { commandId: meta.commandId } : {}),
      data: e.data,
    };
  }

  private remember(key: string, entry: Entry<State>): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    if (this.cache.size > this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
  }
}

/** Records a command's outcome, keeping the newest REMEMBERED_COMMANDS. */
function recordOutcome<State>(commands: Map<string, Outcome<State>>, commandId: string, outcome: Outcome<State>): void {
  commands.delete(commandId);
  commands.set(commandId, outcome);
  if (commands.size > REMEMBERED_COMMANDS) commands.delete(commands.keys().next().value!);
}
