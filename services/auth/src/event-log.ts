import { CommandMeta, EventEnvelope } from '@keel/contracts';
import { CommandHandler, Decider } from '@keel/event-sourcing';
import { EventStore } from '@keel/messaging';

type Recorded = { type: string; data: Record<string, unknown> };

/** For aggregates whose state lives in this service's tables (sessions, API keys): the log records each change. */
const logDecider: Decider<number, Recorded, Recorded> = {
  initialState: () => 0,
  evolve: (n) => n + 1,
  decide: (command) => [command],
};

export class EventLog {
  private readonly handlers = new Map<string, CommandHandler<number, Recorded, Recorded>>();

  constructor(private readonly store: EventStore, private readonly context: string) {}

  async record(aggregateType: string, target: { tenantId: string; aggregateId: string }, event: Recorded, meta: CommandMeta, fresh = false): Promise<{ position: number; events: EventEnvelope[] }> {
    let handler = this.handlers.get(aggregateType);
    if (!handler) {
      handler = new CommandHandler(this.store, { context: this.context, aggregateType, decider: logDecider, cacheSize: 1_000 });
      this.handlers.set(aggregateType, handler);
    }
    const { expectedVersion: _, ...unconditional } = meta;
    const r = await handler.handle(target, event, unconditional, fresh);
    return { position: r.position, events: r.events };
  }
}
