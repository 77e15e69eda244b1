/** A domain event before it is wrapped in an envelope. */
export interface DomainEvent {
  type: string;
  data: Record<string, unknown>;
  /** When it happened; set on events read back from the log or just appended. */
  occurredAt?: string;
}

/**
 * An event as the log holds it: with the time it happened. `evolve` only ever sees these, so a
 * state's times come from its events, never from a default (the command handler passes each
 * envelope's `occurredAt`, set when the command was decided).
 */
export type Recorded<E extends DomainEvent> = E & { occurredAt: string };

/**
 * An aggregate as three pure functions (no I/O): where it starts, how an event changes it,
 * and which events a command produces (or a KeelError refusing it).
 */
export interface Decider<State, Command, Event extends DomainEvent> {
  initialState(): State;
  evolve(state: State, event: Recorded<Event>): State;
  decide(command: Command, state: State): Event[];
}

/** Folds events into state, as a reader of the log would. */
export function fold<State, Event extends DomainEvent>(
  decider: Pick<Decider<State, unknown, Event>, 'initialState' | 'evolve'>,
  events: Recorded<Event>[],
): State {
  return events.reduce((s, e) => decider.evolve(s, e), decider.initialState());
}
