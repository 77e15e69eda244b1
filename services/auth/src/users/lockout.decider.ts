import { KeelError } from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';

/**
 * Brute-force protection as a decider over one attempt counter (an account, a source IP, a
 * user's MFA codes). Pure: the time of every decision is the command's `at` (the store passes
 * Redis's clock, one clock for every replica), and every number comes from the policy and the
 * command's limit. The store (lockout.ts) keeps each counter in Redis and applies a decision
 * atomically (compare-and-set: it decides again when another attempt changed the counter first).
 *
 * The rule: an attempt takes a slot BEFORE the secret is checked, and no more slots are given
 * than failures are still allowed (failures + attempts in flight < limit), so K parallel guesses
 * never get more than N checks. The Nth failure within the window locks the counter for a period
 * that doubles with each lock (remembered for a day) up to a maximum; a success clears the
 * failures. A slot a process never ended is given back on its own after `inFlightMs`. The limit is
 * the command's (the tenant's maxFailedLogins as it is now): a counter holding as many failures as
 * a lowered limit allows, or more, locks at its next attempt, and the refusal says for how long.
 *
 * Its events never reach the log: they are the changes to the counter the store writes.
 */

export interface LockoutPolicy {
  /** Failures count towards a lock for this long after the first of them. */
  windowMs: number;
  /** The first lock lasts this long; each further lock doubles it ... */
  baseLockMs: number;
  /** ... up to this. */
  maxLockMs: number;
  /** How long locks are remembered (for the doubling). */
  locksMemoryMs: number;
  /** An attempt slot is given back on its own this long after the last one was taken. */
  inFlightMs: number;
  /** When every slot is taken (attempts in flight), the refusal says to retry after this. */
  busyRetryMs: number;
}

export const DEFAULT_LOCKOUT_POLICY: LockoutPolicy = {
  windowMs: 15 * 60_000,
  baseLockMs: 60_000,
  maxLockMs: 3_600_000,
  locksMemoryMs: 86_400_000,
  inFlightMs: 30_000,
  busyRetryMs: 1_000,
};

/** One counter; every time is epoch milliseconds, a count past its time counts as 0. */
export interface AttemptCounter {
  inFlight: number;
  inFlightUntil: number;
  failures: number;
  failuresUntil: number;
  lockedUntil: number;
  locks: number;
  locksUntil: number;
}

export type Outcome = 'success' | 'failure' | 'neutral';

export type LockoutCommand =
  /** Asks for an attempt slot; `limit`: failures allowed before the lock. */
  | { type: 'begin'; at: number; limit: number }
  /** Ends an attempt `begin` allowed, with its outcome. */
  | { type: 'end'; at: number; limit: number; outcome: Outcome };

export type LockoutEvent =
  | { type: 'lockout.refused'; data: { reason: 'locked' | 'busy'; retryAfterMs: number }; occurredAt?: string }
  | { type: 'lockout.slot_taken'; data: { inFlight: number; inFlightUntil: number }; occurredAt?: string }
  | { type: 'lockout.slot_released'; data: { inFlight: number }; occurredAt?: string }
  | { type: 'lockout.failure_counted'; data: { failures: number; failuresUntil: number }; occurredAt?: string }
  | { type: 'lockout.failures_cleared'; data: Record<string, never>; occurredAt?: string }
  | { type: 'lockout.locked'; data: { until: number; forMs: number; locks: number; locksUntil: number }; occurredAt?: string };

export const noAttempts = (): AttemptCounter => ({ inFlight: 0, inFlightUntil: 0, failures: 0, failuresUntil: 0, lockedUntil: 0, locks: 0, locksUntil: 0 });

/** The counter as it stands at `at`: what has run out counts for nothing. */
export function liveAt(c: AttemptCounter, at: number): AttemptCounter {
  return {
    inFlight: c.inFlightUntil > at ? c.inFlight : 0,
    inFlightUntil: c.inFlightUntil > at ? c.inFlightUntil : 0,
    failures: c.failuresUntil > at ? c.failures : 0,
    failuresUntil: c.failuresUntil > at ? c.failuresUntil : 0,
    lockedUntil: c.lockedUntil > at ? c.lockedUntil : 0,
    locks: c.locksUntil > at ? c.locks : 0,
    locksUntil: c.locksUntil > at ? c.locksUntil : 0,
  };
}

/** When the whole counter is forgotten (0: it holds nothing at `at`), for the store's expiry. */
export function forgottenAt(c: AttemptCounter, at: number): number {
  const live = liveAt(c, at);
  return Math.max(live.inFlightUntil, live.failuresUntil, live.lockedUntil, live.locksUntil);
}

/** The lock period of the `locks`-th lock: doubling from the base, at most the maximum. */
export function lockPeriod(policy: LockoutPolicy, locks: number): number {
  return Math.min(policy.baseLockMs * 2 ** Math.max(0, locks - 1), policy.maxLockMs);
}

export function lockoutDecider(policy: LockoutPolicy = DEFAULT_LOCKOUT_POLICY): Decider<AttemptCounter, LockoutCommand, LockoutEvent> {
  return {
    initialState: noAttempts,

    evolve(state, event) {
      switch (event.type) {
        case 'lockout.refused':
          return state;
        case 'lockout.slot_taken':
          return { ...state, inFlight: event.data.inFlight, inFlightUntil: event.data.inFlightUntil };
        case 'lockout.slot_released':
          return { ...state, inFlight: event.data.inFlight };
        case 'lockout.failure_counted':
          return { ...state, failures: event.data.failures, failuresUntil: event.data.failuresUntil };
        case 'lockout.failures_cleared':
          return { ...state, failures: 0, failuresUntil: 0 };
        case 'lockout.locked':
          return { ...state, failures: 0, failuresUntil: 0, lockedUntil: event.data.until, locks: event.data.locks, locksUntil: event.data.locksUntil };
        default: {
          // A new event type does not compile until it is handled above.
          const _exhaustive: never = event;
          return state;
        }
      }
    },

    decide(command, state) {
      const { at } = command;
      if (!Number.isFinite(at) || at <= 0) throw new KeelError('validation_failed', 'A lockout decision needs the time it is made at.');
      const live = liveAt(state, at);
      switch (command.type) {
        case 'begin': {
          if (live.lockedUntil > at) return [{ type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: live.lockedUntil - at } }];
          if (live.failures >= command.limit) {
            // The limit was lowered below the failures counted under the one before: under the rule
            // in force the limit-th failure has happened, so the counter locks now, as that failure
            // would have locked it, and the refusal says how long the lock lasts (not "busy").
            const locks = live.locks + 1;
            const forMs = lockPeriod(policy, locks);
            return [
              { type: 'lockout.locked', data: { until: at + forMs, forMs, locks, locksUntil: at + policy.locksMemoryMs } },
              { type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: forMs } },
            ];
          }
          // Failures still allowed, but every one of them is an attempt in flight: retry in a moment.
          if (live.inFlight + live.failures >= command.limit) return [{ type: 'lockout.refused', data: { reason: 'busy', retryAfterMs: policy.busyRetryMs } }];
          return [{ type: 'lockout.slot_taken', data: { inFlight: live.inFlight + 1, inFlightUntil: at + policy.inFlightMs } }];
        }
        case 'end': {
          const events: LockoutEvent[] = live.inFlight > 0 ? [{ type: 'lockout.slot_released', data: { inFlight: live.inFlight - 1 } }] : [];
          switch (command.outcome) {
            case 'success':
              if (live.failures > 0) events.push({ type: 'lockout.failures_cleared', data: {} });
              return events;
            case 'neutral':
              return events;
            case 'failure': {
              const failures = live.failures + 1;
              if (failures < command.limit) {
                // The window runs from the first failure.
                events.push({ type: 'lockout.failure_counted', data: { failures, failuresUntil: live.failures === 0 ? at + policy.windowMs : live.failuresUntil } });
                return events;
              }
              const locks = live.locks + 1;
              const forMs = lockPeriod(policy, locks);
              events.push({ type: 'lockout.locked', data: { until: at + forMs, forMs, locks, locksUntil: at + policy.locksMemoryMs } });
              return events;
            }
            default: {
              const _exhaustive: never = command.outcome;
              throw new KeelError('validation_failed', `Unknown attempt outcome ${String(_exhaustive)}.`);
            }
          }
        }
        default: {
          // A new command does not compile until it is decided above.
          const _exhaustive: never = command;
          throw new KeelError('validation_failed', `Unknown lockout command ${(_exhaustive as { type: string }).type}.`);
        }
      }
    },
  };
}
