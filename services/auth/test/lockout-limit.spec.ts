import Redis from 'ioredis';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { Lockout } from '../src/users/lockout';

/**
 * The lockout store on the real Redis when a tenant lowers maxFailedLogins below the failures an
 * account already has: the next attempt is refused as locked for the lock period (and the lock is
 * in Redis, so every replica refuses it the same), not "busy, try again in 1 s".
 */
describe('lockout when the limit is lowered', () => {
  const env = isolatedEnv('lockoutlimit');
  let redis: Redis;
  let lockout: Lockout;

  beforeAll(() => {
    redis = new Redis(env.REDIS_URL!);
    lockout = new Lockout(redis, env.KEEL_REDIS_PREFIX!);
  });

  afterAll(async () => {
    redis.disconnect();
    await cleanupEnv(env);
  });

  const fail = async (account: string, limit: number) => {
    expect(await lockout.begin(account, undefined, limit)).toEqual({ allowed: true });
    await lockout.end(account, undefined, limit, 'failure');
  };

  it('locks at the next attempt for the lock period, says so, and keeps saying the time left', async () => {
    const account = 't1:ada@acme.test';
    for (let i = 0; i < 3; i++) await fail(account, 5);

    const refused = await lockout.begin(account, undefined, 2);
    expect(refused).toMatchObject({ allowed: false, reason: 'locked', scope: 'account', retryAfterMs: 60_000, lockedUntil: expect.any(String) });
    const until = Date.parse(refused.lockedUntil!);

    // The lock is in Redis: the next attempt (another replica's alike) is refused until it ends, whatever the limit now.
    const again = await lockout.begin(account, undefined, 5);
    expect(again).toMatchObject({ allowed: false, reason: 'locked', scope: 'account' });
    expect(again.lockedUntil).toBeUndefined();
    expect(again.retryAfterMs).toBeGreaterThan(0);
    expect(again.retryAfterMs).toBeLessThanOrEqual(60_000);
    const ttl = await redis.pttl(`${env.KEEL_REDIS_PREFIX}lockout:account:${account}:counter`);
    expect(ttl).toBeGreaterThan(0);
    expect(Date.now() + ttl).toBeGreaterThanOrEqual(until - 1_000);
  });

  it('still answers "busy" when only attempts in flight fill what the limit allows', async () => {
    const account = 't1:grace@acme.test';
    await fail(account, 2);
    expect(await lockout.begin(account, undefined, 2)).toEqual({ allowed: true });
    expect(await lockout.begin(account, undefined, 2)).toMatchObject({ allowed: false, reason: 'busy', retryAfterMs: 1_000 });
  });
});
