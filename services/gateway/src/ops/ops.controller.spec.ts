import 'reflect-metadata';
import { OpsController, REDIS_PING_TIMEOUT_MS } from './ops.controller';

/** /ready with a connected NATS and a Redis that answers, refuses or never answers its PING. */
function ready(ping: () => Promise<string>) {
  const messaging = { nc: { isClosed: () => false, rtt: async () => 1 } };
  const controller = new OpsController(messaging as never, { ping } as never);
  let status = 0;
  const reply = { status: (s: number) => { status = s; return reply; } };
  return controller.ready(reply as never).then((body) => ({ status, body: body as { status: string; checks: Record<string, unknown> } }));
}

describe('gateway /ready and Redis', () => {
  it('is ready with a Redis that answers', async () => {
    const r = await ready(async () => 'PONG');
    expect(r.status).toBe(200);
    expect(r.body.checks.redis).toEqual({ ok: true });
  });

  it('is ready, degraded, with a Redis that refuses', async () => {
    const r = await ready(async () => { throw new Error('Connection is closed.'); });
    expect(r.status).toBe(200);
    expect(r.body.checks.redis).toMatchObject({ ok: true, detail: 'degraded: Connection is closed.' });
  });

  it('is ready, degraded, within the ping timeout with a silent Redis (a PING never answered)', async () => {
    const started = Date.now();
    const r = await ready(() => new Promise<string>(() => undefined));
    const took = Date.now() - started;
    expect(r.status).toBe(200);
    expect(r.body.checks.redis).toMatchObject({ ok: true, detail: expect.stringMatching(/^degraded: Redis PING did not finish within 1000 ms/) });
    expect(took).toBeGreaterThanOrEqual(REDIS_PING_TIMEOUT_MS - 50);
    expect(took).toBeLessThan(3_000);
  });
});
