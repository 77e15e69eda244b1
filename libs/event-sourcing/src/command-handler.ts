import { CommandMeta, EventEnvelope, KeelError, newEventId } from '@keel/contracts';
import { ConcurrencyConflict, EventStore } from '@keel/messaging';
import { Decider, DomainEvent } from './decider';

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
  events: EventEnvelope[];
}

/**
 * Load → decide → append with the aggregate's last stream sequence as the expected one.
 * A conflict reloads from the log and decides again, a bounded number of times.
 */
export class CommandHandler<State, Command, Event extends DomainEvent> {
  private readonly cache = new Map<string, Loaded<State>>();
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
    const key = this.subject(target);
    const cached = this.cache.get(key);
    const base: Loaded<State> = cached ?? { state: this.spec.decider.initialState(), version: 0, position: 0 };
    const newer = await this.store.readSubject(key, base.position);
    if (newer.length === 0) return base;
    let { state, version, position } = base;
    for (const { position: p, event } of newer) {
      const e = this.spec.upcast ? this.spec.upcast(event) : event;
      state = this.spec.decider.evolve(state, { type: e.type, data: e.data, occurredAt: e.occurredAt } as Event);
      version = e.aggregateVersion;
      position = p;
    }
    const loaded = { state, version, position };
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
    for (let attempt = 1; ; attempt++) {
      const current: Loaded<State> =
        fresh && attempt === 1
          ? { state: this.spec.decider.initialState(), version: 0, position: 0 }
          : (this.cache.get(key) ?? (await this.load(target)));
      if (meta.expectedVersion !== undefined && meta.expectedVersion !== current.version) {
        // A stale cache must not answer 412: check against the log before refusing.
        const fromLog = await this.load(target);
        if (meta.expectedVersion !== fromLog.version) {
          throw new KeelError(
            'version_mismatch',
            `The resource is at version ${fromLog.version}, not ${meta.expectedVersion}; fetch it again and retry.`,
          );
        }
        continue;
      }
      const domainEvents = this.spec.decider.decide(command, current.state);
      if (domainEvents.length === 0) return { ...current, events: [] };
      const envelopes = domainEvents.map((e, i) => this.envelope(target, e, current.version + i + 1, meta));
      try {
        const positions = await this.store.append(envelopes, current.position);
        let state = current.state;
        envelopes.forEach((env, i) => (state = this.spec.decider.evolve(state, { ...domainEvents[i]!, occurredAt: env.occurredAt })));
        const next = { state, version: current.version + domainEvents.length, position: positions[positions.length - 1]! };
        this.remember(key, next);
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

  private envelope(t: AggregateTarget, e: Event, aggregateVersion: number, meta: CommandMeta): EventEnvelope {
    return {
      id: newEventId(),
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
      data: e.data,
    };
  }

  private remember(key: string, loaded: Loaded<State>): void {
    this.cache.delete(key);
    this.cache.set(key, loaded);
    if (this.cache.size > this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
  }
}
