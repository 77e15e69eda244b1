import { cleanupEnv, isolatedEnv, Stack } from '@keel/testing';
import { manifestService, SHUTDOWN_DEADLINE_MS } from '@keel/service-kit';

interface Ready {
  status: string;
  checks: Record<string, { ok: boolean }>;
}

/**
 * The kit as the services run it (built main.js, real NATS, Postgres and Redis): a backend's ops
 * server answers on the port it is given with a check for each of its dependencies, a gateway
 * listens, each stops cleanly on SIGTERM within the deadline, and a missing setting stops the
 * start with a sentence naming it.
 */
describe('bootstrapService', () => {
  const env = isolatedEnv('servicekit');
  const stack = new Stack(env);

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('runs a backend with bounded readiness checks for NATS, Postgres, Redis and its projection', async () => {
    await stack.start('audit', 'tenant', 'auth');
    const ready = async (name: string) => {
      const res = await fetch(`${stack.opsUrl(name)}/ready`);
      return { status: res.status, body: (await res.json()) as Ready };
    };
    const tenant = await ready('tenant');
    expect(tenant.status).toBe(200);
    expect(Object.keys(tenant.body.checks).sort()).toEqual(['nats', 'postgres', 'projection', 'redis']);
    expect(Object.values(tenant.body.checks).every((c) => c.ok)).toBe(true);
    // A service's own checks come after the kit's: auth's outbox, audit's ledger (audit has no Redis nor projection); auth has two projections, each its own check.
    expect(Object.keys((await ready('auth')).body.checks).sort()).toEqual(['nats', 'outbox', 'postgres', 'projection erasures', 'projection users', 'redis']);
    expect(Object.keys((await ready('audit')).body.checks).sort()).toEqual(['ledger', 'nats', 'postgres']);
  });

  it('runs the gateway with the transport connected and its own /ready', async () => {
    await stack.start('gateway');
    const res = await fetch(`${stack.gatewayUrl}/ready`);
    expect(res.status).toBe(200);
    expect(manifestService('gateway').kind).toBe('gateway');
  });

  it.each(['gateway', 'auth', 'tenant', 'audit'])('stops %s on SIGTERM within the deadline, every step finished (exit code 0)', async (name) => {
    const started = Date.now();
    const exit = await stack.kill(name, 'SIGTERM');
    expect({ exit, logs: exit?.code === 0 ? '' : stack.logs(name) }).toEqual({ exit: { code: 0, signal: null }, logs: '' });
    expect(Date.now() - started).toBeLessThan(SHUTDOWN_DEADLINE_MS);
  });

  it('refuses to start a service without a setting it requires, naming it', async () => {
    const withoutKek = new Stack({ ...env, KEEL_KEK: '' });
    await expect(withoutKek.start('auth')).rejects.toThrow(/KEEL_KEK is not set: set it to 32 random bytes/);
  });
});
