import { CommandMeta, EventEnvelope, eventSubject, KeelError, PositionedEvent, validateEnvelope } from '@keel/contracts';
import { ConcurrencyConflict, EventStore } from '@keel/messaging';
import { aggregateIdFor, AggregateSpec, CommandHandler, deterministicUuid, REMEMBERED_COMMANDS } from './command-handler';
import { Decider } from './decider';

// ---- a tiny counter aggregate, just enough to drive the handler ----

interface CounterState {
  started: boolean;
  count: number;
}

type CounterCommand =
  | { type: 'start' }
  | { type: 'add'; by: number }
  | { type: 'add_twice'; by: number }
  | { type: 'touch' }
  | { type: 'bump' }
  | { type: 'fail' };

type CounterEvent =
  | { type: 'counter.counter.started'; data: Record<string, never>; occurredAt?: string }
  | { type: 'counter.counter.added'; data: { by: number }; occurredAt?: string };

const counterDecider: Decider<CounterState, CounterCommand, CounterEvent> = {
  initialState: () => ({ started: false, count: 0 }),
  evolve(state, event) {
    switch (event.type) {
      case 'counter.counter.started':
        return { ...state, started: true };
      case 'counter.counter.added':
        return { ...state, count: state.count + event.data.by };
    }
  },
  decide(command, state) {
    switch (command.type) {
      case 'start':
        if (state.started) throw new KeelError('conflict', 'This counter already exists.');
        return [{ type: 'counter.counter.started', data: {} }];
      case 'add':
        return [{ type: 'counter.counter.added', data: { by: command.by } }];
      case 'add_twice':
        return [
          { type: 'counter.counter.added', data: { by: command.by } },
          { type: 'counter.counter.added', data: { by: command.by } },
        ];
      case 'touch':
        return [];
      case 'bump':
        if (!state.started) throw new KeelError('invalid_transition', 'Start the counter first.');
        return [{ type: 'counter.counter.added', data: { by: 1 } }];
      case 'fail':
        throw new KeelError('invalid_transition', 'Counters cannot do that.');
    }
  },
};

// ---- an in-memory event log that behaves like EventStore on JetStream ----

class FakeEventStore {
  readonly log: PositionedEvent[] = [];
  readonly appendCalls: { subject: string; expected: number; count: number }[] = [];
  readonly readCalls: { subject: string; after: number }[] = [];
  conflicts = 0;
  /** Publishes answered as duplicates of an earlier message id (stored nothing). */
  duplicates = 0;
  /** `Nats-Msg-Id` → position, as the stream's duplicate window holds them. */
  private readonly window = new Map<string, number>();
  /** Runs at the start of every append, before the optimistic check: "another replica" acts here. */
  beforeAppend?: () => void;
  /** Thrown by the next append instead of appending. */
  failNextAppendWith?: Error;

  subjectOf(e: Pick<EventEnvelope, 'tenantId' | 'type' | 'aggregateType' | 'aggregateId'>): string {
    return eventSubject('', e);
  }

  lastPositionOf(subject: string): number {
    for (let i = this.log.length - 1; i >= 0; i--) {
      if (this.subjectOf(this.log[i]!.event) === subject) return this.log[i]!.position;
    }
    return 0;
  }

  async append(events: EventEnvelope[], expectedLastPosition: number): Promise<number[]> {
    for (const e of events) validateEnvelope(e);
    this.appendCalls.push({ subject: this.subjectOf(events[0]!), expected: expectedLastPosition, count: events.length });
    // A network round trip: lets other commands interleave, as they would against NATS.
    await new Promise((resolve) => setImmediate(resolve));
    this.beforeAppend?.();
    if (this.failNextAppendWith) {
      const error = this.failNextAppendWith;
      this.failNextAppendWith = undefined;
      throw error;
    }
    const positions: number[] = [];
    let expected = expectedLastPosition;
    for (const event of events) {
      const subject = this.subjectOf(event);
      // As JetStream: a message id inside the duplicate window is acknowledged with the first
      // copy's position before any expectation is checked, and stores nothing.
      const duplicate = this.window.get(event.id);
      if (duplicate !== undefined) {
        this.duplicates++;
        positions.push(duplicate);
        expected = duplicate;
        continue;
      }
      if (this.lastPositionOf(subject) !== expected) {
        this.conflicts++;
        throw new ConcurrencyConflict(subject, expected);
      }
      const position = this.log.length + 1;
      this.log.push({ position, event: JSON.parse(JSON.stringify(event)) });
      this.window.set(event.id, position);
      positions.push(position);
      expected = position;
    }
    return positions;
  }

  async readSubject(subject: string, afterPosition = 0): Promise<PositionedEvent[]> {
    this.readCalls.push({ subject, after: afterPosition });
    await new Promise((resolve) => setImmediate(resolve));
    return this.log.filter((p) => p.position > afterPosition && this.subjectOf(p.event) === subject).map((p) => JSON.parse(JSON.stringify(p)));
  }

  async readPosition(position: number): Promise<{ event: unknown; events: unknown[] } | null> {
    await new Promise((resolve) => setImmediate(resolve));
    const found = this.log.find((p) => p.position === position);
    return found ? { event: JSON.parse(JSON.stringify(found.event)), events: [JSON.parse(JSON.stringify(found.event))] } : null;
  }

  /** The stream's 2-minute duplicate window has passed: message ids are no longer remembered. */
  expireDuplicateWindow(): void {
    this.window.clear();
  }

  /** An event of some other aggregate, so positions and versions differ. */
  appendUnrelated(): void {
    const position = this.log.length + 1;
    this.log.push({ position, event: envelopeFor('other-tenant', 'other', 1, { by: 0 }) });
  }

  eventsOf(aggregateId: string): EventEnvelope[] {
    return this.log.filter((p) => p.event.aggregateId === aggregateId).map((p) => p.event);
  }
}

function envelopeFor(tenantId: string, aggregateId: string, aggregateVersion: number, data: Record<string, unknown>, type = 'counter.counter.added'): EventEnvelope {
  return {
    id: `0190d4a5-0000-7000-8000-${String(Math.floor(Math.random() * 1e12)).padStart(12, '0')}`,
    type,
    schemaVersion: 1,
    tenantId,
    aggregateType: 'counter',
    aggregateId,
    aggregateVersion,
    occurredAt: '2024-01-01T00:00:00.000Z',
    actor: { kind: 'service', id: 'another-replica' },
    correlationId: 'elsewhere',
    data,
  };
}

const spec: AggregateSpec<CounterState, CounterCommand, CounterEvent> = {
  context: 'counter',
  aggregateType: 'counter',
  decider: counterDecider,
};

const meta: CommandMeta = { actor: { kind: 'user', id: 'u-1', tenantId: 't1' }, correlationId: 'req-1' };
const target = { tenantId: 't1', aggregateId: 'c1' };
const subject = 'evt.t1.counter.counter.c1';

function handlerOn(store: FakeEventStore, overrides: Partial<AggregateSpec<CounterState, CounterCommand, CounterEvent>> = {}) {
  return new CommandHandler(store as unknown as EventStore, { ...spec, ...overrides });
}

/** Another replica writing to the same log: an event appended behind the handler's back. */
function anotherReplicaAdds(store: FakeEventStore, by = 100): void {
  const version = store.eventsOf(target.aggregateId).length + 1;
  store.log.push({ position: store.log.length + 1, event: envelopeFor(target.tenantId, target.aggregateId, version, { by }) });
}

async function rejection(promise: Promise<unknown>): Promise<KeelError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof KeelError) return error;
    throw error;
  }
  throw new Error('expected the command to be refused');
}

describe('CommandHandler', () => {
  describe('a new aggregate', () => {
    it('appends without reading when the id is fresh, expecting an empty subject', async () => {
      const store = new FakeEventStore();
      store.appendUnrelated();
      store.appendUnrelated();

      const result = await handlerOn(store).handle(target, { type: 'start' }, meta, true);

      expect(store.readCalls).toEqual([]);
      expect(store.appendCalls).toEqual([{ subject, expected: 0, count: 1 }]);
      expect(result.version).toBe(1);
      expect(result.position).toBe(3);
      expect(result.state).toEqual({ started: true, count: 0 });
      expect(result.events.map((e) => e.type)).toEqual(['counter.counter.started']);
    });

    it('still refuses a fresh id whose subject already has events (the append checks)', async () => {
      const store = new FakeEventStore();
      store.log.push({ position: 1, event: envelopeFor('t1', 'c1', 1, {}, 'counter.counter.started') });

      const error = await rejection(handlerOn(store).handle(target, { type: 'start' }, meta, true));

      expect(error.code).toBe('conflict');
      expect(store.conflicts).toBe(1);
      expect(store.log).toHaveLength(1);
    });
  });

  describe('a cached aggregate another replica moved', () => {
    it('judges a refusal again on the log before answering it', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      // Started behind this handler's back: its cache still says not started.
      store.log.push({ position: store.log.length + 1, event: envelopeFor('t1', 'c1', 2, {}, 'counter.counter.started') });

      const result = await handler.handle(target, { type: 'bump' }, meta);

      expect(result).toMatchObject({ version: 3, state: { started: true, count: 2 } });
      expect(store.eventsOf('c1').map((e) => e.aggregateVersion)).toEqual([1, 2, 3]);
    });

    it('answers a decision with nothing to do from the log, not from its stale copy', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      anotherReplicaAdds(store, 10);

      const result = await handler.handle(target, { type: 'touch' }, meta);

      expect(result).toMatchObject({ version: 2, state: { count: 11 }, events: [] });
      expect(store.appendCalls).toHaveLength(1);
    });

    it('still refuses what the log refuses too', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);

      expect((await rejection(handler.handle(target, { type: 'bump' }, meta))).code).toBe('invalid_transition');
    });
  });

  describe('an existing aggregate', () => {
    it('loads it from the log, appends after its last position and returns version and position', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 2 }, meta);
      store.appendUnrelated();

      const result = await handlerOn(store).handle(target, { type: 'add', by: 3 }, meta);

      expect(store.appendCalls[1]).toEqual({ subject, expected: 1, count: 1 });
      expect(result).toMatchObject({ version: 2, position: 3, state: { count: 5 } });
      expect(store.eventsOf('c1').map((e) => e.aggregateVersion)).toEqual([1, 2]);
    });

    it('reads only the events after the cached position on the next command', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      store.appendUnrelated();
      anotherReplicaAdds(store, 10);

      const loaded = await handler.load(target);

      expect(store.readCalls.at(-1)).toEqual({ subject, after: 1 });
      expect(loaded).toEqual({ state: { started: false, count: 11 }, version: 2, position: 3 });
    });

    it('appends several events of one decision with consecutive versions', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);

      const result = await handler.handle(target, { type: 'add_twice', by: 5 }, meta);

      expect(result.events.map((e) => e.aggregateVersion)).toEqual([2, 3]);
      expect(result).toMatchObject({ version: 3, position: 3, state: { count: 11 } });
      expect(store.appendCalls.at(-1)).toEqual({ subject, expected: 1, count: 2 });
    });
  });

  describe('envelopes', () => {
    it('carry actor, correlation, aggregate coordinates, version and schema version', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store, { schemaVersions: { 'counter.counter.added': 3 } });
      await handler.handle(target, { type: 'start' }, meta);

      const before = Date.now();
      const { events } = await handler.handle(target, { type: 'add', by: 4 }, { ...meta, correlationId: 'req-9' });
      const after = Date.now();

      expect(events).toHaveLength(1);
      const e = events[0]!;
      expect(e).toMatchObject({
        type: 'counter.counter.added',
        schemaVersion: 3,
        tenantId: 't1',
        aggregateType: 'counter',
        aggregateId: 'c1',
        aggregateVersion: 2,
        actor: { kind: 'user', id: 'u-1', tenantId: 't1' },
        correlationId: 'req-9',
        data: { by: 4 },
      });
      expect(store.log.at(-1)!.event).toEqual(e);
      expect(store.log[0]!.event.schemaVersion).toBe(1);
      expect(Date.parse(e.occurredAt)).toBeGreaterThanOrEqual(before);
      expect(Date.parse(e.occurredAt)).toBeLessThanOrEqual(after);
      expect(() => validateEnvelope(e)).not.toThrow();
      expect(e.id).not.toBe(store.log[0]!.event.id);
    });

    it('put occurredAt into the state through evolve', async () => {
      const seen: (string | undefined)[] = [];
      const store = new FakeEventStore();
      const handler = handlerOn(store, {
        decider: { ...counterDecider, evolve: (s, e) => (seen.push(e.occurredAt), counterDecider.evolve(s, e)) },
      });
      const { events } = await handler.handle(target, { type: 'add', by: 1 }, meta);
      expect(seen).toEqual([events[0]!.occurredAt]);
    });
  });

  describe('a decision without events', () => {
    it('appends nothing and answers the current state', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 7 }, meta);

      const result = await handler.handle(target, { type: 'touch' }, meta);

      expect(store.appendCalls).toHaveLength(1);
      expect(result).toEqual({ state: { started: false, count: 7 }, version: 1, position: 1, events: [] });
    });
  });

  describe('a refused command', () => {
    it('propagates the decider error and appends nothing', async () => {
      const store = new FakeEventStore();
      const error = await rejection(handlerOn(store).handle(target, { type: 'fail' }, meta));
      expect(error.code).toBe('invalid_transition');
      expect(store.appendCalls).toEqual([]);
    });

    it('does not retry an append that fails for another reason than a conflict', async () => {
      const store = new FakeEventStore();
      store.failNextAppendWith = new KeelError('service_unavailable', 'The event log did not accept the event.');
      const error = await rejection(handlerOn(store).handle(target, { type: 'add', by: 1 }, meta));
      expect(error.code).toBe('service_unavailable');
      expect(store.appendCalls).toHaveLength(1);
      expect(store.log).toEqual([]);
    });
  });

  describe('optimistic concurrency', () => {
    it('retries after a concurrent append by another replica, deciding on the reloaded state', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      let interfered = false;
      store.beforeAppend = () => {
        if (!interfered) anotherReplicaAdds(store, 100);
        interfered = true;
      };

      const result = await handler.handle(target, { type: 'add', by: 10 }, meta);

      expect(store.conflicts).toBe(1);
      expect(store.appendCalls.slice(1).map((c) => c.expected)).toEqual([1, 2]);
      expect(result).toMatchObject({ version: 3, position: 3, state: { count: 111 } });
      expect(store.eventsOf('c1').map((e) => e.aggregateVersion)).toEqual([1, 2, 3]);
    });

    it('answers concurrent_modification after maxAttempts persistent conflicts, appending nothing', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store, { maxAttempts: 3 });
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      store.beforeAppend = () => anotherReplicaAdds(store);

      const error = await rejection(handler.handle(target, { type: 'add', by: 1 }, meta));

      expect(error.code).toBe('concurrent_modification');
      expect(error.status).toBe(409);
      expect(store.appendCalls).toHaveLength(1 + 3);
      expect(store.conflicts).toBe(3);
      expect(store.eventsOf('c1').filter((e) => e.actor.id === 'u-1')).toHaveLength(1);
    });

    it('defaults to 8 attempts', async () => {
      const store = new FakeEventStore();
      store.beforeAppend = () => anotherReplicaAdds(store);
      const error = await rejection(handlerOn(store).handle(target, { type: 'add', by: 1 }, meta));
      expect(error.code).toBe('concurrent_modification');
      expect(store.appendCalls).toHaveLength(8);
    });

    it('serialises concurrent commands on one aggregate in-process: 20 at once, versions 1..20, no conflict', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);

      const results = await Promise.all(Array.from({ length: 20 }, () => handler.handle(target, { type: 'add', by: 1 }, meta)));

      expect(results.map((r) => r.version)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect(store.conflicts).toBe(0);
      expect(store.eventsOf('c1').map((e) => e.aggregateVersion)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect(results.at(-1)!.state.count).toBe(20);
    });

    it('does not serialise different aggregates behind each other', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      const other = { tenantId: 't1', aggregateId: 'c2' };

      const [a, b] = await Promise.all([handler.handle(target, { type: 'add', by: 1 }, meta), handler.handle(other, { type: 'add', by: 1 }, meta)]);

      expect([a.version, b.version]).toEqual([1, 1]);
      expect(store.conflicts).toBe(0);
    });

    it('keeps the queue moving after a refused command', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);

      const outcomes = await Promise.allSettled([
        handler.handle(target, { type: 'add', by: 1 }, meta),
        handler.handle(target, { type: 'fail' }, meta),
        handler.handle(target, { type: 'add', by: 1 }, meta),
      ]);

      expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      expect((outcomes[2] as PromiseFulfilledResult<{ version: number }>).value.version).toBe(2);
    });
  });

  describe('expectedVersion', () => {
    it('applies the command when the aggregate is at that version', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);

      const result = await handler.handle(target, { type: 'add', by: 1 }, { ...meta, expectedVersion: 1 });

      expect(result.version).toBe(2);
    });

    it('refuses with version_mismatch (412) and appends nothing when the aggregate moved on', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      const logBefore = store.log.length;

      const error = await rejection(handler.handle(target, { type: 'add', by: 1 }, { ...meta, expectedVersion: 1 }));

      expect(error.code).toBe('version_mismatch');
      expect(error.status).toBe(412);
      expect(error.message).toContain('version 2, not 1');
      expect(store.log).toHaveLength(logBefore);
      expect(store.appendCalls).toHaveLength(2);
    });

    it('expects version 0 of an aggregate that does not exist yet', async () => {
      const store = new FakeEventStore();
      const result = await handlerOn(store).handle(target, { type: 'start' }, { ...meta, expectedVersion: 0 });
      expect(result.version).toBe(1);
    });

    it('does not answer 412 from a stale cache: it checks the log first', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      anotherReplicaAdds(store, 100);

      // The caller read version 2 (written by the other replica); this replica's cache says 1.
      const result = await handler.handle(target, { type: 'add', by: 1 }, { ...meta, expectedVersion: 2 });

      expect(result).toMatchObject({ version: 3, state: { count: 102 } });
      expect(store.conflicts).toBe(0);
    });

    it('answers 412 when a concurrent append moved the aggregate past the expected version', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      store.beforeAppend = () => {
        store.beforeAppend = undefined;
        anotherReplicaAdds(store);
      };

      const error = await rejection(handler.handle(target, { type: 'add', by: 1 }, { ...meta, expectedVersion: 1 }));

      expect(error.code).toBe('version_mismatch');
      expect(store.eventsOf('c1').map((e) => e.actor.id)).toEqual(['u-1', 'another-replica']);
    });
  });

  describe('loading', () => {
    it('upcasts stored events before evolving', async () => {
      const store = new FakeEventStore();
      store.log.push({ position: 1, event: envelopeFor('t1', 'c1', 1, { amount: 5 }) });
      const handler = handlerOn(store, {
        upcast: (e) => (e.schemaVersion === 1 && 'amount' in e.data ? { ...e, schemaVersion: 2, data: { by: e.data.amount } } : e),
      });

      const result = await handler.handle(target, { type: 'add', by: 1 }, meta);

      expect(result.state.count).toBe(6);
      expect(result.version).toBe(2);
    });

    it('answers the initial state at version 0 for an empty subject', async () => {
      const loaded = await handlerOn(new FakeEventStore()).load(target);
      expect(loaded).toEqual({ state: { started: false, count: 0 }, version: 0, position: 0 });
    });

    it('stays correct when the cache evicts aggregates', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store, { cacheSize: 1 });
      const other = { tenantId: 't1', aggregateId: 'c2' };
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      await handler.handle(other, { type: 'add', by: 1 }, meta);

      const result = await handler.handle(target, { type: 'add', by: 1 }, meta);

      expect(result).toMatchObject({ version: 2, state: { count: 2 } });
      expect(store.readCalls.at(-1)).toEqual({ subject, after: 0 });
      expect(store.conflicts).toBe(0);
    });
  });

  describe('a command with a commandId (applied at most once)', () => {
    const once = (commandId: string, extra: Partial<CommandMeta> = {}): CommandMeta => ({ ...meta, commandId, ...extra });
    /** A handler whose decisions are counted. */
    const counted = (store: FakeEventStore) => {
      const calls = { decide: 0 };
      const handler = handlerOn(store, {
        decider: { ...counterDecider, decide: (c, s) => (calls.decide++, counterDecider.decide(c, s)) },
      });
      return { handler, calls };
    };
    const outcome = (r: { state: CounterState; version: number; position: number }) => ({ state: r.state, version: r.version, position: r.position });

    it('after an event the spec names as forgetting, a retried command is answered with the state after it, never its remembered outcome, and applies nothing twice', async () => {
      const forgets = ['counter.counter.started'];
      /** A retry in a later millisecond than its first run (as a retry is): its event's time differs from the stored one's. */
      const nextMs = async () => {
        const t = Date.now();
        while (Date.now() === t) await new Promise((r) => setImmediate(r));
      };
      const run = async (overrides: Partial<AggregateSpec<CounterState, CounterCommand, CounterEvent>>, fresh: boolean) => {
        const store = new FakeEventStore();
        const handler = handlerOn(store, overrides);
        await handler.handle(target, { type: 'add', by: 1 }, once('cmd-f'));
        // A "forgetting" event lands after the command (here: started, on a counter never started).
        await handler.handle(target, { type: 'start' }, meta);
        await nextMs();
        const retried = await (fresh ? handlerOn(store, overrides) : handler).handle(target, { type: 'add', by: 1 }, once('cmd-f'));
        return { retried, events: store.eventsOf(target.aggregateId).length };
      };
      for (const fresh of [false, true]) {
        const forgot = await run({ forgets }, fresh);
        // The retry's event has the first run's id: the log keeps one; the answer is the state as it is now.
        expect({ events: forgot.retried.events.length, logged: forgot.events, state: forgot.retried.state }).toEqual({ events: 0, logged: 2, state: { started: true, count: 1 } });
        const remembered = await run({}, fresh);
        expect({ events: remembered.retried.events.length, logged: remembered.events, state: remembered.retried.state }).toEqual({ events: 0, logged: 2, state: { started: false, count: 1 } });
      }
    });

    it('gives its events ids derived from the command id and the aggregate, and the command id in the envelope', async () => {
      const a = new FakeEventStore();
      const b = new FakeEventStore();
      const other = { tenantId: 't1', aggregateId: 'c2' };

      const first = await handlerOn(a).handle(target, { type: 'add_twice', by: 1 }, once('cmd-1'));
      const again = await handlerOn(b).handle(target, { type: 'add_twice', by: 1 }, once('cmd-1'));
      const elsewhere = await handlerOn(b).handle(other, { type: 'add_twice', by: 1 }, once('cmd-1'));
      const plain = await handlerOn(b).handle(target, { type: 'add', by: 1 }, meta);

      const ids = first.events.map((e) => e.id);
      expect(again.events.map((e) => e.id)).toEqual(ids);
      expect(new Set(ids).size).toBe(2);
      expect(elsewhere.events.map((e) => e.id).filter((id) => ids.includes(id))).toEqual([]);
      expect(b.eventsOf('c2')).toHaveLength(2);
      expect(a.log.map((p) => p.event.commandId)).toEqual(['cmd-1', 'cmd-1']);
      for (const e of [...first.events, ...elsewhere.events]) expect(() => validateEnvelope(e)).not.toThrow();
      expect('commandId' in plain.events[0]!).toBe(false);
      expect(ids).not.toContain(plain.events[0]!.id);
    });

    it('answers a retry in the same process with the first outcome, deciding and appending nothing', async () => {
      const store = new FakeEventStore();
      const { handler, calls } = counted(store);
      const first = await handler.handle(target, { type: 'add', by: 5 }, once('cmd-1'));

      const retry = await handler.handle(target, { type: 'add', by: 5 }, { ...once('cmd-1'), correlationId: 'req-2' });

      expect(retry).toEqual({ ...outcome(first), events: [] });
      expect(calls.decide).toBe(1);
      expect(store.appendCalls).toHaveLength(1);
      expect(store.log).toHaveLength(1);
    });

    it('answers a retry in another replica or after a restart from the log (the command id is in it)', async () => {
      const store = new FakeEventStore();
      const first = await handlerOn(store).handle(target, { type: 'add', by: 5 }, once('cmd-1'));
      store.expireDuplicateWindow();
      const restarted = counted(store);
      const readsBefore = store.readCalls.length;

      const retry = await restarted.handler.handle(target, { type: 'add', by: 5 }, once('cmd-1'));

      expect(retry).toEqual({ ...outcome(first), events: [] });
      expect(restarted.calls.decide).toBe(0);
      expect(store.readCalls.slice(readsBefore)).toEqual([{ subject, after: 0 }]);
      expect(store.log).toHaveLength(1);
    });

    it('answers the earlier outcome after later commands moved the aggregate on', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      const first = await handler.handle(target, { type: 'add', by: 1 }, once('cmd-1'));
      await handler.handle(target, { type: 'add', by: 10 }, once('cmd-2'));
      await handler.handle(target, { type: 'add', by: 100 }, meta);

      const inProcess = await handler.handle(target, { type: 'add', by: 1 }, once('cmd-1'));
      const fromLog = await handlerOn(store).handle(target, { type: 'add', by: 1 }, once('cmd-1'));

      expect(first).toMatchObject({ state: { count: 1 }, version: 1, position: 1 });
      expect(inProcess).toEqual({ ...outcome(first), events: [] });
      expect(fromLog).toEqual({ ...outcome(first), events: [] });
      expect(store.log).toHaveLength(3);
    });

    it('keeps the outcome of a decision with several events at its last event', async () => {
      const store = new FakeEventStore();
      store.appendUnrelated();
      await handlerOn(store).handle(target, { type: 'add_twice', by: 2 }, once('cmd-1'));

      const retry = await handlerOn(store).handle(target, { type: 'add_twice', by: 2 }, once('cmd-1'));

      expect(retry).toEqual({ state: { started: false, count: 4 }, version: 2, position: 3, events: [] });
      expect(store.log).toHaveLength(3);
    });

    it('answers the first outcome, not 412, to a retry whose expectedVersion the command itself moved past', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      await handler.handle(target, { type: 'add', by: 1 }, meta);
      const first = await handler.handle(target, { type: 'add', by: 1 }, once('cmd-1', { expectedVersion: 1 }));

      const inProcess = await handler.handle(target, { type: 'add', by: 1 }, once('cmd-1', { expectedVersion: 1 }));
      const fromLog = await handlerOn(store).handle(target, { type: 'add', by: 1 }, once('cmd-1', { expectedVersion: 1 }));
      const stranger = await rejection(handler.handle(target, { type: 'add', by: 1 }, once('cmd-2', { expectedVersion: 1 })));

      expect(first.version).toBe(2);
      expect(inProcess).toEqual({ ...outcome(first), events: [] });
      expect(fromLog).toEqual({ ...outcome(first), events: [] });
      expect(stranger.code).toBe('version_mismatch');
      expect(store.log).toHaveLength(2);
    });

    it('stores a republish inside the duplicate window once and answers what the log holds', async () => {
      const store = new FakeEventStore();
      const a = handlerOn(store);
      const b = counted(store);
      await b.handler.handle(target, { type: 'add', by: 1 }, meta); // B's view stays at version 1.
      const first = await a.handle(target, { type: 'add', by: 5 }, once('cmd-1'));

      // B decides on its stale view and republishes the same event ids: JetStream acknowledges the
      // first copy's position without checking the expectation, and stores nothing.
      const retry = await b.handler.handle(target, { type: 'add', by: 5 }, { ...once('cmd-1'), correlationId: 'req-2' });

      expect(b.calls.decide).toBe(2);
      expect(store.duplicates).toBe(1);
      expect(store.log).toHaveLength(2);
      expect(first).toMatchObject({ version: 2, position: 2, state: { count: 6 } });
      expect(retry).toEqual({ ...outcome(first), events: [] });
      const next = await b.handler.handle(target, { type: 'add', by: 1 }, meta);
      expect(next).toMatchObject({ version: 3, state: { count: 7 } });
      expect(store.conflicts).toBe(0);
    });

    it('after the duplicate window, a stale replica meets the optimistic check and answers from the log', async () => {
      const store = new FakeEventStore();
      const a = handlerOn(store);
      const b = handlerOn(store);
      await b.handle(target, { type: 'add', by: 1 }, meta); // B's view stays at version 1.
      const first = await a.handle(target, { type: 'add', by: 5 }, once('cmd-1'));
      store.expireDuplicateWindow();

      const retry = await b.handle(target, { type: 'add', by: 5 }, once('cmd-1'));

      expect(store.conflicts).toBe(1);
      expect(store.duplicates).toBe(0);
      expect(store.log).toHaveLength(2);
      expect(retry).toEqual({ ...outcome(first), events: [] });
    });

    it('makes a create with an id derived from the command id read the log, so its retry finds the aggregate', async () => {
      const store = new FakeEventStore();
      const created = { tenantId: 't1', aggregateId: aggregateIdFor('cmd-1', 'counter') };
      const first = await handlerOn(store).handle(created, { type: 'start' }, once('cmd-1'), true);
      store.expireDuplicateWindow();

      // 'start' refuses an existing counter: the retry must not decide again.
      const retry = await handlerOn(store).handle(created, { type: 'start' }, once('cmd-1'), true);

      expect(retry).toEqual({ ...outcome(first), events: [] });
      expect(store.readCalls.map((r) => r.after)).toEqual([0, 0]);
      expect(store.eventsOf(created.aggregateId)).toHaveLength(1);
    });

    it('serialises a command and its concurrent retries in one process: one event, every answer the same', async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);

      const results = await Promise.all([1, 2, 3].map(() => handler.handle(target, { type: 'add', by: 1 }, once('cmd-1'))));

      expect(store.log).toHaveLength(1);
      expect(results.map(outcome)).toEqual([outcome(results[0]!), outcome(results[0]!), outcome(results[0]!)]);
      expect(results.map((r) => r.events.length)).toEqual([1, 0, 0]);
    });

    it('records no outcome for a refused command: its retry is decided again and refused again', async () => {
      const store = new FakeEventStore();
      const { handler, calls } = counted(store);

      const first = await rejection(handler.handle(target, { type: 'fail' }, once('cmd-1')));
      const retry = await rejection(handler.handle(target, { type: 'fail' }, once('cmd-1')));

      expect([first.code, retry.code]).toEqual(['invalid_transition', 'invalid_transition']);
      expect(calls.decide).toBe(2);
      expect(store.log).toEqual([]);
    });

    it(`remembers the last ${REMEMBERED_COMMANDS} command ids of an aggregate, not more`, async () => {
      const store = new FakeEventStore();
      const handler = handlerOn(store);
      for (let i = 0; i <= REMEMBERED_COMMANDS; i++) await handler.handle(target, { type: 'add', by: 1 }, once(`cmd-${i}`));
      store.expireDuplicateWindow();
      const restarted = counted(store);

      const oldestKept = await restarted.handler.handle(target, { type: 'add', by: 1 }, once('cmd-1'));
      expect(oldestKept).toMatchObject({ version: 2, position: 2, events: [] });
      expect(restarted.calls.decide).toBe(0);
      expect((await handler.handle(target, { type: 'add', by: 1 }, once('cmd-1'))).events).toEqual([]);

      const forgotten = await restarted.handler.handle(target, { type: 'add', by: 1 }, once('cmd-0'));
      expect(restarted.calls.decide).toBe(1);
      expect(forgotten.version).toBe(REMEMBERED_COMMANDS + 2);
    });
  });

  describe('deterministic ids', () => {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

    it('are UUIDs (version 8), the same for the same parts and different for different ones', () => {
      expect(deterministicUuid('a', 'b')).toMatch(uuid);
      expect(deterministicUuid('a', 'b')).toBe(deterministicUuid('a', 'b'));
      expect(deterministicUuid('a', 'b')).not.toBe(deterministicUuid('a', 'c'));
      expect(deterministicUuid('a', 'b')).not.toBe(deterministicUuid('ab'));
    });

    it('give a create the same aggregate id for the same command id, per aggregate type and scope', () => {
      expect(aggregateIdFor('cmd-1', 'tenant')).toMatch(uuid);
      expect(aggregateIdFor('cmd-1', 'tenant')).toBe(aggregateIdFor('cmd-1', 'tenant'));
      expect(aggregateIdFor('cmd-1', 'tenant')).not.toBe(aggregateIdFor('cmd-2', 'tenant'));
      expect(aggregateIdFor('cmd-1', 'tenant')).not.toBe(aggregateIdFor('cmd-1', 'user'));
      expect(aggregateIdFor('cmd-1', 'user', 't1')).toBe(aggregateIdFor('cmd-1', 'user', 't1'));
      expect(aggregateIdFor('cmd-1', 'user', 't1')).not.toBe(aggregateIdFor('cmd-1', 'user', 't2'));
    });
  });
});
