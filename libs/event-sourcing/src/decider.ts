/** A domain event before it is wrapped in an envelope. */
export interface DomainEvent {
  type: string;
  data: Record<string, unknown>;
  /** When it happened; set on events read back from the log or just appended. */
  occurredAt?: string;
}

/**
 * An aggregate as three pure functions (no I/O): where it starts, how an event changes it,
 * and which events a command produces (or a KeelError refusing it).
 */
export interface Decider<State, Command, Event extends DomainEvent> {
  initialState(): State;
  evolve(state: State, event: Event): State;
  decide(command: Command, state: State): Event[];
}

/** Folds events into state, as a reader of the log would. */
export function fold<State, Event extends DomainEvent>(
  decider: Pick<Decider<State, unknown, Event>, 'initialState' | 'evolve'>,
  events: Event[],
): State {
  return events.reduce((s, e) => decider.evolve(s, e), decider.initialState());
}
