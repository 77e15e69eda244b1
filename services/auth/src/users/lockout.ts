import Redis from 'ioredis';
import { KeelError } from '@keel/contracts';
import { Recorded } from '@keel/event-sourcing';
import {
  AttemptCounter,
  DEFAULT_LOCKOUT_POLICY,
  forgottenAt,
  lockoutDecider,
  LockoutCommand,
  LockoutEvent,
  LockoutPolicy,
  noAttempts,
  Outcome,
} from './lockout.decider';

export type { Outcome } from './lockout.decider';

/**
 * The lockout store: one Redis key per counter (an account, a source IP, a user's MFA codes)
 * holding its state as JSON. The rule is lockout.decider.ts; this applies its decisions
 * atomically with one Lua script used two ways: `read` answers the value and Redis's clock,
 * `cas` writes the decided value only if the key still holds the value it was decided on (else
 * it answers the current value and clock, and the decision is made again). So parallel attempts
 * are serialised per counter exactly as the earlier all-in-Lua counters were: K parallel guesses
 * never get more than the limit's checks.
 */
const APPLY = `
local current = redis.call('GET', KEYS[1]) or ''
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'read' or current ~= ARGV[2] then return {0, current, now} end
if ARGV[3] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
return {1, '', now}
`;

export interface AttemptDecision {
  allowed: boolean;
  /** When refused: how long until an attempt may be made. */
  retryAfterMs?: number;
  /** When refused: locked (for `retryAfterMs`), or every allowed attempt is in flight (retry in a moment). */
  reason?: 'locked' | 'busy';
  scope?: 'ip' | 'account';
  /** When this very decision locked the account (a lowered limit already reached): until when, for the trail. */
  lockedUntil?: string;
}

type LockoutRedis = Redis & {
  keelLockoutApply(key: string, mode: 'read' | 'cas', expected: string, next: string, ttlMs: number): Promise<[number, string, number]>;
};

/** Compare-and-set rounds before a counter too contended to decide on answers 503. */
const MAX_ROUNDS = 500;

export class Lockout {
  private readonly redis: LockoutRedis;
  private readonly decider: ReturnType<typeof lockoutDecider>;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly o: { perIpLimit: number; policy: LockoutPolicy } = { perIpLimit: 100, policy: DEFAULT_LOCKOUT_POLICY },
  ) {
    redis.defineCommand('keelLockoutApply', { numberOfKeys: 1, lua: APPLY });
    this.redis = redis as LockoutRedis;
    this.decider = lockoutDecider(o.policy);
  }

  private key(kind: string, id: string): string {
    return `${this.prefix}lockout:${kind}:${id}:counter`;
  }

  /** Decides `command` (made at Redis's time) on the counter and writes what it decided, atomically. */
  private async apply(kind: string, id: string, command: (at: number) => LockoutCommand): Promise<LockoutEvent[]> {
    const key = this.key(kind, id);
    let [, value, now] = await this.redis.keelLockoutApply(key, 'read', '', '', 0);
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const state: AttemptCounter = value ? { ...noAttempts(), ...JSON.parse(value) } : noAttempts();
      const events = this.decider.decide(command(now), state);
      const occurredAt = new Date(now).toISOString();
      const next = events.reduce((s, e) => this.decider.evolve(s, { ...e, occurredAt } as Recorded<LockoutEvent>), state);
      const until = forgottenAt(next, now);
      const serialized = until > now ? JSON.stringify(next) : '';
      if (serialized === value) return events; // nothing to write (a refusal, or nothing changed)
      const [written, current, time] = await this.redis.keelLockoutApply(key, 'cas', value, serialized, Math.max(1, until - now));
      if (written === 1) return events;
      value = current;
      now = time;
    }
    throw new KeelError('service_unavailable', 'Too many sign-in attempts at once on this account or address; try again in a moment.');
  }

  private async take(kind: string, id: string, limit: number): Promise<AttemptDecision> {
    const events = await this.apply(kind, id, (at) => ({ type: 'begin', at, limit }));
    const refused = events.find((e) => e.type === 'lockout.refused');
    const locked = events.find((e) => e.type === 'lockout.locked');
    if (refused?.type !== 'lockout.refused') return { allowed: true };
    return {
      allowed: false,
      retryAfterMs: refused.data.retryAfterMs,
      reason: refused.data.reason,
      ...(locked?.type === 'lockout.locked' ? { lockedUntil: new Date(locked.data.until).toISOString() } : {}),
    };
  }

  /** Ends an attempt on one counter; the lock when this failure locked it. */
  private async release(kind: string, id: string, limit: number, outcome: Outcome): Promise<{ forMs: number; until: number } | undefined> {
    const events = await this.apply(kind, id, (at) => ({ type: 'end', at, limit, outcome }));
    const locked = events.find((e) => e.type === 'lockout.locked');
    return locked?.type === 'lockout.locked' ? { forMs: locked.data.forMs, until: locked.data.until } : undefined;
  }

  /** Takes an attempt slot for the source IP and the account; refused while either is locked or busy. */
  async begin(account: string, ip: string | undefined, accountLimit: number): Promise<AttemptDecision> {
    if (ip) {
      const byIp = await this.take('ip', ip, this.o.perIpLimit);
      if (!byIp.allowed) return { ...byIp, scope: 'ip' };
    }
    const byAccount = await this.take('account', account, accountLimit);
    if (!byAccount.allowed && ip) await this.release('ip', ip, this.o.perIpLimit, 'neutral');
    return byAccount.allowed ? byAccount : { ...byAccount, scope: 'account' };
  }

  /**
   * Ends an attempt that `begin` allowed. A failure counts towards the lock; a success clears
   * the failures. Returns the lock period, and until when, when this failure locked the account.
   */
  async end(account: string, ip: string | undefined, accountLimit: number, outcome: Outcome): Promise<{ lockedForMs?: number; lockedUntil?: string }> {
    // A success clears the account's failures, not the source's: else an attacker's own account
    // would reset the per-IP count between guesses at others.
    if (ip) await this.release('ip', ip, this.o.perIpLimit, outcome === 'success' ? 'neutral' : outcome);
    const locked = await this.release('account', account, accountLimit, outcome);
    return locked === undefined ? {} : { lockedForMs: locked.forMs, lockedUntil: new Date(locked.until).toISOString() };
  }
}
