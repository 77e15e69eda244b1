import Redis from 'ioredis';

/**
 * Brute-force protection in Redis, per account and per source IP. An attempt takes a slot
 * atomically BEFORE the secret is checked, and no more slots are given than failures are
 * still allowed: K parallel guesses never get more than N checks. The Nth failure locks for
 * a period that doubles with each lock; a success clears the failures.
 */
const BEGIN = `
local lockTtl = redis.call('PTTL', KEYS[3])
if lockTtl > 0 then return {0, lockTtl} end
local used = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(redis.call('GET', KEYS[2]) or '0')
if used >= tonumber(ARGV[1]) then return {0, 1000} end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, 0}
`;

const END = `
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
if ARGV[2] == 'success' then
  redis.call('DEL', KEYS[2])
elseif ARGV[2] == 'failure' then
  local failures = redis.call('INCR', KEYS[2])
  if failures == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
  if failures >= tonumber(ARGV[1]) then
    local locks = redis.call('INCR', KEYS[4])
    redis.call('PEXPIRE', KEYS[4], 86400000)
    local ms = math.min(tonumber(ARGV[4]) * 2 ^ (locks - 1), tonumber(ARGV[5]))
    redis.call('SET', KEYS[3], '1', 'PX', ms)
    redis.call('DEL', KEYS[2])
    return {1, ms}
  end
end
return {0, 0}
`;

export type Outcome = 'success' | 'failure' | 'neutral';

export interface AttemptDecision {
  allowed: boolean;
  /** When refused: how long until an attempt may be made. */
  retryAfterMs?: number;
  scope?: 'ip' | 'account';
}

type LockoutRedis = Redis & {
  keelAttemptBegin(k1: string, k2: string, k3: string, ...args: (string | number)[]): Promise<[number, number]>;
  keelAttemptEnd(k1: string, k2: string, k3: string, k4: string, ...args: (string | number)[]): Promise<[number, number]>;
};

/** An attempt slot is released on its own if the process dies before ending it. */
const IN_FLIGHT_MS = 30_000;

export class Lockout {
  private readonly redis: LockoutRedis;

  constructor(
    redis: Redis,
    private readonly prefix: string,
    private readonly o = { windowMs: 15 * 60_000, baseLockMs: 60_000, maxLockMs: 3_600_000, perIpLimit: 100 },
  ) {
    redis.defineCommand('keelAttemptBegin', { numberOfKeys: 3, lua: BEGIN });
    redis.defineCommand('keelAttemptEnd', { numberOfKeys: 4, lua: END });
    this.redis = redis as LockoutRedis;
  }

  private keys(kind: string, id: string): [string, string, string, string] {
    const base = `${this.prefix}lockout:${kind}:${id}`;
    return [`${base}:inflight`, `${base}:failures`, `${base}:lock`, `${base}:locks`];
  }

  private async take(kind: string, id: string, limit: number): Promise<AttemptDecision> {
    const [k1, k2, k3] = this.keys(kind, id);
    const [ok, retry] = await this.redis.keelAttemptBegin(k1, k2, k3, limit, IN_FLIGHT_MS);
    return ok === 1 ? { allowed: true } : { allowed: false, retryAfterMs: retry };
  }

  private async release(kind: string, id: string, limit: number, outcome: Outcome): Promise<number | undefined> {
    const [locked, ms] = await this.redis.keelAttemptEnd(...this.keys(kind, id), limit, outcome, this.o.windowMs, this.o.baseLockMs, this.o.maxLockMs);
    return locked === 1 ? ms : undefined;
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
   * the failures. Returns the lock period when this failure locked the account.
   */
  async end(account: string, ip: string | undefined, accountLimit: number, outcome: Outcome): Promise<{ lockedForMs?: number }> {
    // A success clears the account's failures, not the source's: else an attacker's own account
    // would reset the per-IP count between guesses at others.
    if (ip) await this.release('ip', ip, this.o.perIpLimit, outcome === 'success' ? 'neutral' : outcome);
    const lockedForMs = await this.release('account', account, accountLimit, outcome);
    return lockedForMs === undefined ? {} : { lockedForMs };
  }
}
