import { deciderSpec } from '@keel/event-sourcing';
import { DEFAULT_LOCKOUT_POLICY, forgottenAt, liveAt, lockoutDecider, LockoutEvent, lockPeriod, noAttempts } from './lockout.decider';

const policy = { ...DEFAULT_LOCKOUT_POLICY, windowMs: 15 * 60_000, baseLockMs: 60_000, maxLockMs: 3_600_000, inFlightMs: 30_000, busyRetryMs: 1_000 };
const { given } = deciderSpec(lockoutDecider(policy));

const T0 = Date.parse('2024-01-01T00:00:00.000Z');
const limit = 3;
const begin = (at = T0) => ({ type: 'begin' as const, at, limit });
const end = (outcome: 'success' | 'failure' | 'neutral', at = T0) => ({ type: 'end' as const, at, limit, outcome });

const taken = (inFlight: number, at = T0): LockoutEvent => ({ type: 'lockout.slot_taken', data: { inFlight, inFlightUntil: at + policy.inFlightMs } });
const released = (inFlight: number): LockoutEvent => ({ type: 'lockout.slot_released', data: { inFlight } });
const failed = (failures: number, firstAt = T0): LockoutEvent => ({ type: 'lockout.failure_counted', data: { failures, failuresUntil: firstAt + policy.windowMs } });
const locked = (locks: number, at = T0): LockoutEvent => {
  const forMs = lockPeriod(policy, locks);
  return { type: 'lockout.locked', data: { until: at + forMs, forMs, locks, locksUntil: at + policy.locksMemoryMs } };
};

describe('lockout decider', () => {
  describe('begin', () => {
    it('gives a slot to the first attempt', () => {
      given().when(begin()).then([taken(1)]);
    });

    it('gives no more slots than failures are still allowed (in flight + failures < limit)', () => {
      given(taken(1), taken(2)).when(begin()).then([taken(3)]);
      given(taken(1), taken(2), taken(3)).when(begin()).then([{ type: 'lockout.refused', data: { reason: 'busy', retryAfterMs: 1_000 } }]);
      given(failed(1), failed(2), taken(1)).when(begin()).then([{ type: 'lockout.refused', data: { reason: 'busy', retryAfterMs: 1_000 } }]);
    });

    it('refuses while locked, saying how long is left', () => {
      given(locked(1)).when(begin(T0 + 15_000)).then([{ type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: 45_000 } }]);
    });

    it('allows again once the lock ran out', () => {
      given(locked(1)).when(begin(T0 + 60_000)).then([taken(1, T0 + 60_000)]);
    });

    it('gives back slots a process never ended once they ran out', () => {
      given(taken(1), taken(2), taken(3)).when(begin(T0 + 30_000)).then([taken(1, T0 + 30_000)]);
    });

    it('forgets failures after the window from the first of them', () => {
      given(failed(1), failed(2)).when(begin(T0 + policy.windowMs)).then([taken(1, T0 + policy.windowMs)]);
    });

    describe('a limit lowered below the failures already counted (the tenant changed maxFailedLogins)', () => {
      const lockedNow = (at = T0 + 5_000) => [locked(1, at), { type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: 60_000 } }] as LockoutEvent[];

      it('locks at the next attempt, as the limit-th failure would have, and says for how long (not "1 s")', () => {
        given(failed(1), failed(2)).when({ type: 'begin', at: T0 + 5_000, limit: 2 }).then(lockedNow());
        given(failed(1), failed(2), failed(3), failed(4)).when({ type: 'begin', at: T0 + 5_000, limit: 1 }).then(lockedNow());
        // Attempts in flight change nothing: the failures alone reached the limit.
        given(failed(1), failed(2), taken(1)).when({ type: 'begin', at: T0 + 5_000, limit: 2 }).then(lockedNow());
      });

      it('keeps the lock it told of: the next attempts are refused with the time left, then allowed with the failures cleared', () => {
        const history = [failed(1), failed(2), ...lockedNow()];
        expect(given(...history).state).toMatchObject({ failures: 0, locks: 1, lockedUntil: T0 + 65_000 });
        given(...history).when({ type: 'begin', at: T0 + 35_000, limit: 2 }).then([{ type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: 30_000 } }]);
        given(...history).when({ type: 'begin', at: T0 + 65_000, limit: 2 }).then([taken(1, T0 + 65_000)]);
      });

      it('doubles the lock as any further lock does', () => {
        given(locked(1), failed(1, T0 + 60_000), failed(2, T0 + 60_000)).when({ type: 'begin', at: T0 + 61_000, limit: 2 }).then([locked(2, T0 + 61_000), { type: 'lockout.refused', data: { reason: 'locked', retryAfterMs: 120_000 } }]);
      });

      it('a raised limit allows the attempts it adds', () => {
        given(failed(1), failed(2)).when({ type: 'begin', at: T0 + 5_000, limit: 5 }).then([taken(1, T0 + 5_000)]);
      });
    });

    it('refuses a command without a time (no silent epoch)', () => {
      given().when({ type: 'begin', at: 0, limit }).thenRefused('validation_failed', /time/);
      given().when({ type: 'begin', at: Number.NaN, limit }).thenRefused('validation_failed', /time/);
    });
  });

  describe('end', () => {
    it('a failure gives the slot back and counts, the window running from the first failure', () => {
      given(taken(1)).when(end('failure')).then([released(0), failed(1)]);
      given(failed(1), taken(1, T0 + 5_000)).when(end('failure', T0 + 6_000)).then([released(0), failed(2)]);
    });

    it('the limit-th failure locks, clears the failures, and the next attempt is refused as locked', () => {
      const history = [failed(1), failed(2), taken(1)];
      given(...history).when(end('failure')).then([released(0), locked(1)]);
      expect(given(...history, released(0), locked(1)).state).toMatchObject({ failures: 0, locks: 1, lockedUntil: T0 + 60_000 });
    });

    it('each further lock doubles, up to the maximum', () => {
      expect([1, 2, 3, 6, 7, 20].map((n) => lockPeriod(policy, n))).toEqual([60_000, 120_000, 240_000, 1_920_000, 3_600_000, 3_600_000]);
      given(locked(1), failed(1, T0 + 60_000), failed(2, T0 + 60_000), taken(1, T0 + 61_000)).when(end('failure', T0 + 62_000)).then([released(0), locked(2, T0 + 62_000)]);
    });

    it('locks are forgotten after a day: the next lock is the first again', () => {
      const later = T0 + policy.locksMemoryMs;
      given(locked(3), failed(1, later - 1), failed(2, later - 1), taken(1, later - 1)).when(end('failure', later)).then([released(0), locked(1, later)]);
    });

    it('a success gives the slot back and clears the failures', () => {
      given(failed(1), taken(1)).when(end('success')).then([released(0), { type: 'lockout.failures_cleared', data: {} }]);
      given(taken(1)).when(end('success')).then([released(0)]);
    });

    it('a neutral end only gives the slot back', () => {
      given(failed(1), taken(1)).when(end('neutral')).then([released(0)]);
      given().when(end('neutral')).thenNothing();
    });
  });

  describe('the counter over time', () => {
    it('is forgotten once everything in it ran out', () => {
      const state = given(taken(1), failed(1)).state;
      expect(forgottenAt(state, T0)).toBe(T0 + policy.windowMs);
      expect(forgottenAt(state, T0 + policy.windowMs)).toBe(0);
      expect(liveAt(state, T0 + policy.windowMs)).toEqual(noAttempts());
    });
  });
});
