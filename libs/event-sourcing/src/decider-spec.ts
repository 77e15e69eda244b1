import { AssertionError, deepStrictEqual } from 'node:assert';
import { KeelError } from '@keel/contracts';
import { Decider, DomainEvent, fold, Recorded } from './decider';

/** A refusal a command is expected to meet: the KeelError code, and optionally its message. */
export interface ExpectedRefusal {
  error: string;
  message?: RegExp | string;
}

export interface DeciderWhen<Event> {
  /** The command decides exactly these events (in order), or is refused as described. */
  then(expected: Event[] | ExpectedRefusal): void;
  /** The command decides no events (nothing to change). */
  thenNothing(): void;
  /** The command is refused with a KeelError of this code (and a message matching `message`). */
  thenRefused(code: string, message?: RegExp | string): void;
}

export interface DeciderGiven<State, Command, Event> {
  /** The state the past events fold into. */
  state: State;
  when(command: Command): DeciderWhen<Event>;
}

/** Compares as JSON does: an absent property and one set to undefined are the same. */
const plain = (value: unknown): unknown => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));

function refusalOf(run: () => unknown): KeelError {
  let decided: unknown;
  try {
    decided = run();
  } catch (error) {
    if (error instanceof KeelError) return error;
    throw error;
  }
  throw new AssertionError({ message: `expected a refusal, but the command decided ${JSON.stringify(decided)}` });
}

/**
 * given / when / then for a decider, in any test runner:
 *
 *     const { given } = deciderSpec(tenantDecider);
 *     given(created()).when({ type: 'suspend', data: { reason: 'x' } }).then([suspended('x')]);
 *     given().when({ type: 'suspend', data: { reason: 'x' } }).then({ error: 'not_found' });
 *
 * `given` folds the past events with the decider's own `evolve` (an event written without a time
 * gets the spec's clock, `options.at`); `then` compares the decided events with the expected ones,
 * or checks the refusal.
 */
export function deciderSpec<State, Command, Event extends DomainEvent>(
  decider: Decider<State, Command, Event>,
  /** The time given events carry when a test writes them without one: the spec's own, stated clock. */
  options: { at?: string } = {},
) {
  const at = options.at ?? '2024-01-01T00:00:00.000Z';
  function given(...events: Event[]): DeciderGiven<State, Command, Event> {
    const state = fold(decider, events.map((e) => ({ ...e, occurredAt: e.occurredAt ?? at }) as Recorded<Event>));
    return {
      state,
      when(command: Command): DeciderWhen<Event> {
        const run = () => decider.decide(command, state);
        const refused = (code: string, message?: RegExp | string) => {
          const error = refusalOf(run);
          if (error.code !== code) {
            throw new AssertionError({ message: `expected a refusal with ${code}, got ${error.code}: ${error.message}`, actual: error.code, expected: code });
          }
          if (message !== undefined && !(typeof message === 'string' ? error.message.includes(message) : message.test(error.message))) {
            throw new AssertionError({ message: `the refusal's message ${JSON.stringify(error.message)} does not match ${String(message)}`, actual: error.message, expected: message });
          }
        };
        return {
          then(expected) {
            if (!Array.isArray(expected)) return refused(expected.error, expected.message);
            let decided: Event[];
            try {
              decided = run();
            } catch (error) {
              if (error instanceof KeelError) throw new AssertionError({ message: `expected ${JSON.stringify(expected)}, but the command was refused: ${error.code}: ${error.message}` });
              throw error;
            }
            deepStrictEqual(plain(decided), plain(expected));
          },
          thenNothing() {
            this.then([]);
          },
          thenRefused: refused,
        };
      },
    };
  }
  return { given };
}
