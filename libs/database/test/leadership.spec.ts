import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { AdvisoryLeadership, ensureDatabase, openDataSource } from '@keel/database';
import { cleanupEnv, isolatedEnv } from '@keel/testing';

/** Resolves to 'pending' if `p` has not settled within `ms`. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<'resolved' | 'rejected' | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p.then(
        () => 'resolved' as const,
        () => 'rejected' as const,
      ),
      new Promise<'pending'>((r) => (timer = setTimeout(() => r('pending'), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** AdvisoryLeadership against the real PostgreSQL. */
describe('AdvisoryLeadership', () => {
  const env = isolatedEnv('leadership');
  let ds: DataSource;
  let admin: Client;
  const all: AdvisoryLeadership[] = [];
  const leadership = (key: string) => {
    const l = new AdvisoryLeadership(ds, key, 50);
    all.push(l);
    return l;
  };
  const key = () => `keel.test.${randomBytes(4).toString('hex')}`;
  /** Backends of this database holding an advisory lock. */
  const holders = async () =>
    (
      await admin.query(
        `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      )
    ).rows.map((r) => r.pid as number);

  beforeAll(async () => {
    await ensureDatabase(env.DATABASE_URL!);
    ds = await openDataSource({ url: env.DATABASE_URL!, schema: 'public', applicationName: 'leadership-test' });
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
  });

  afterAll(async () => {
    for (const l of all) await l.release();
    await admin?.end();
    await ds?.destroy();
    await cleanupEnv(env);
  });

  it('lets one instance of a key lead; the other acquires once the first releases', async () => {
    const k = key();
    const a = leadership(k);
    const b = leadership(k);
    await a.acquire();
    expect(a.isLeader).toBe(true);

    const bAcquired = b.acquire();
    expect(await settledWithin(bAcquired, 400)).toBe('pending');
    expect(b.isLeader).toBe(false);
    expect(await a.stillHeld()).toBe(true);
    expect(await holders()).toHaveLength(1);

    await a.release();
    expect(a.isLeader).toBe(false);
    expect(await settledWithin(bAcquired, 2_000)).toBe('resolved');
    expect(b.isLeader).toBe(true);
    expect(await b.stillHeld()).toBe(true);
    expect(await a.stillHeld()).toBe(false);
    expect(await holders()).toHaveLength(1);

    await b.release();
    expect(await holders()).toHaveLength(0);
  });

  it('keeps different keys independent', async () => {
    const a = leadership(key());
    const b = leadership(key());
    await a.acquire();
    expect(await settledWithin(b.acquire(), 1_000)).toBe('resolved');
    expect([a.isLeader, b.isLeader]).toEqual([true, true]);
    await a.release();
    await b.release();
  });

  it('can lead again after releasing', async () => {
    const k = key();
    const a = leadership(k);
    const b = leadership(k);
    await a.acquire();
    await a.release();
    await b.acquire();
    await b.release();
    expect(await settledWithin(a.acquire(), 1_000)).toBe('resolved');
    expect(a.isLeader).toBe(true);
    await a.release();
  });

  it('rejects a pending acquire of the same instance when it is released', async () => {
    const k = key();
    const holder = leadership(k);
    const waiter = leadership(k);
    await holder.acquire();
    const pending = waiter.acquire();
    expect(await settledWithin(pending, 200)).toBe('pending');
    await waiter.release();
    await expect(pending).rejects.toThrow(`leadership of ${k} was released while waiting`);
    expect(waiter.isLeader).toBe(false);
    // The holder is unaffected, and the waiter's connection holds nothing.
    expect(await holder.stillHeld()).toBe(true);
    expect(await holders()).toHaveLength(1);
    await holder.release();
  });

  it('reports the lock lost when its connection dies, and another instance then leads', async () => {
    const k = key();
    const a = leadership(k);
    const b = leadership(k);
    await a.acquire();
    const bAcquired = b.acquire();
    const [pid] = await holders();
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    expect(await settledWithin(bAcquired, 3_000)).toBe('resolved');
    expect(await a.stillHeld()).toBe(false);
    expect(a.isLeader).toBe(false);
    expect(b.isLeader).toBe(true);
    await b.release();
  });
});
