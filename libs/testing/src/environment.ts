import { randomBytes } from 'node:crypto';
import { connect } from 'nats';
import Redis from 'ioredis';
import { dropDatabase } from '@keel/database';

export type TestEnv = Record<string, string>;

const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';
const ADMIN_URL = process.env.KEEL_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** The run id globalSetup made (one per `npm test`); everything a run creates carries it. */
export function testRunId(): string {
  return process.env.KEEL_TEST_RUN ?? 'adhoc';
}

/**
 * A namespace of its own for one test file: stream, subject prefix, database and Redis
 * prefix, so files and runs never see each other's data, nor a running Keel's.
 */
export function isolatedEnv(label: string): TestEnv {
  const id = `${testRunId()}_${label.replace(/[^a-z0-9]/gi, '').toLowerCase().slice(0, 16)}_${randomBytes(2).toString('hex')}`;
  const db = new URL(ADMIN_URL);
  db.pathname = `/keel_test_${id}`;
  return {
    NATS_URL,
    DATABASE_URL: db.toString(),
    REDIS_URL,
    KEEL_STREAM: `TEST_${id}`.toUpperCase(),
    KEEL_SUBJECT_PREFIX: `${id}.`,
    KEEL_REDIS_PREFIX: `keel:test:${id}:`,
    KEEL_BOOTSTRAP_TOKEN: `test-token-${randomBytes(12).toString('hex')}`,
    KEEL_LOG_LEVEL: process.env.KEEL_TEST_LOG_LEVEL ?? 'warn',
    // Each role its own secret (roles are cluster-wide: every test run uses the same ones).
    KEEL_DB_PASSWORD: 'keel',
    KEEL_DB_PASSWORD_AUDIT: 'keel-audit-test',
    KEEL_DB_PASSWORD_AUTH: 'keel-auth-test',
    KEEL_DB_PASSWORD_TENANT: 'keel-tenant-test',
    KEEL_KEK: randomBytes(32).toString('base64'),
    KEEL_ADMIN_EMAIL: 'admin@keel.test',
    // Random hex: passes the password policy (it must not contain the email's local part, "admin") and the start-up check.
    KEEL_ADMIN_PASSWORD: randomBytes(16).toString('hex'),
    // Tests (and the bench) sign in from 127.0.0.1 many times a second: the per-address limit on
    // public routes is tested on its own (test/edge.spec.ts sets it low).
    KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: '1000000',
  };
}

/** Removes what a test namespace created: its stream, database and Redis keys. */
export async function cleanupEnv(env: TestEnv): Promise<void> {
  // The stream, and the KV buckets the transport keeps beside it (`KV_<stream>_events`, `KV_<stream>_leases`).
  const kvPrefix = `KV_${env.KEEL_STREAM.replace(/[^A-Za-z0-9_-]/g, '_')}_`;
  await removeMatching({ stream: (name) => name === env.KEEL_STREAM || name.startsWith(kvPrefix), database: (name) => `/${name}` === new URL(env.DATABASE_URL!).pathname, redisPattern: `${env.KEEL_REDIS_PREFIX}*` });
}

/** Removes every stream, database and Redis key of a whole test run (the safety net). */
export async function cleanupRun(run: string): Promise<void> {
  await removeMatching({
    stream: (name) => name.startsWith(`TEST_${run}_`.toUpperCase()) || name.startsWith(`KV_TEST_${run}_`.toUpperCase()),
    database: (name) => name.startsWith(`keel_test_${run}_`),
    redisPattern: `keel:test:${run}_*`,
  });
}

async function removeMatching(m: { stream: (n: string) => boolean; database: (n: string) => boolean; redisPattern: string }): Promise<void> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await nc.jetstreamManager();
    for await (const name of jsm.streams.names()) if (m.stream(name)) await jsm.streams.delete(name).catch(() => undefined);
  } finally {
    await nc.close();
  }
  const { Client } = await import('pg');
  const admin = new Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datname LIKE 'keel_test_%'");
    for (const { datname } of rows) {
      if (!m.database(datname)) continue;
      const url = new URL(ADMIN_URL);
      url.pathname = `/${datname}`;
      await dropDatabase(url.toString()).catch(() => undefined);
    }
  } finally {
    await admin.end();
  }
  const redis = new Redis(REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', m.redisPattern, 'COUNT', 1000);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}
