import { isolatedEnv } from './environment';

describe('isolatedEnv', () => {
  it('gives each test file its own stream, subject prefix, database and Redis prefix', () => {
    const a = isolatedEnv('Ledger Tests');
    const b = isolatedEnv('Ledger Tests');
    for (const key of ['KEEL_STREAM', 'KEEL_SUBJECT_PREFIX', 'DATABASE_URL', 'KEEL_REDIS_PREFIX', 'KEEL_BOOTSTRAP_TOKEN', 'KEEL_KEK'] as const) {
      expect(a[key]).not.toBe(b[key]);
    }
    expect(a.KEEL_STREAM).toMatch(/^TEST_[A-Z0-9_]+$/);
    expect(a.KEEL_SUBJECT_PREFIX).toMatch(/^[a-z0-9_-]+\.$/);
    expect(new URL(a.DATABASE_URL!).pathname).toMatch(/^\/keel_test_[a-z0-9_]+$/);
    expect(Buffer.from(a.KEEL_KEK!, 'base64')).toHaveLength(32);
  });
});
