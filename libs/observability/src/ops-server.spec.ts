import { AddressInfo } from 'node:net';
import { Server } from 'node:http';
import { Counter } from 'prom-client';
import { metricsRegistry } from './metrics';
import { readiness, ReadinessCheck, startOpsServer } from './ops-server';

const check = (name: string, fn: ReadinessCheck['check']): ReadinessCheck => ({ name, check: fn });

describe('readiness', () => {
  it('is 200 "ready" with every check when all pass, whether they answer a boolean or an object', async () => {
    const r = await readiness([
      check('nats', async () => true),
      check('postgres', async () => ({ ok: true, detail: { latencyMs: 3 } })),
    ]);
    expect(r).toEqual({
      status: 200,
      body: { status: 'ready', checks: { nats: { ok: true }, postgres: { ok: true, detail: { latencyMs: 3 } } } },
    });
  });

  it('is 200 with no checks at all', async () => {
    expect(await readiness([])).toEqual({ status: 200, body: { status: 'ready', checks: {} } });
  });

  it('is 503 when one check answers false, keeping every check in the body', async () => {
    const r = await readiness([check('nats', async () => true), check('redis', async () => false)]);
    expect(r).toEqual({ status: 503, body: { status: 'not_ready', checks: { nats: { ok: true }, redis: { ok: false } } } });
  });

  it('is 503 with the detail of a check that fails with one', async () => {
    const r = await readiness([
      check('projection', async () => ({ ok: false, detail: { deadLetters: 2, lastError: 'position 7: bad' } })),
      check('nats', async () => ({ ok: true })),
    ]);
    expect(r.status).toBe(503);
    expect(r.body).toEqual({
      status: 'not_ready',
      checks: { projection: { ok: false, detail: { deadLetters: 2, lastError: 'position 7: bad' } }, nats: { ok: true } },
    });
  });

  it('is 503 with the error message of a check that throws, and still runs the others', async () => {
    const other = jest.fn(async () => true);
    const r = await readiness([
      check('postgres', async () => {
        throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
      }),
      check('redis', other),
    ]);
    expect(other).toHaveBeenCalled();
    expect(r).toEqual({
      status: 503,
      body: { status: 'not_ready', checks: { postgres: { ok: false, detail: 'connect ECONNREFUSED 127.0.0.1:5432' }, redis: { ok: true } } },
    });
  });

  it('is 503 when a failing check finishes after a passing one (order does not matter)', async () => {
    const slowFail = check('slow', () => new Promise((r) => setTimeout(() => r(false), 20)));
    const fastPass = check('fast', async () => true);
    expect((await readiness([slowFail, fastPass])).status).toBe(503);
    expect((await readiness([fastPass, slowFail])).status).toBe(503);
  });
});

describe('startOpsServer', () => {
  let server: Server;
  let base: string;
  let ready = true;
  const counter = new Counter({ name: 'keel_ops_test_total', help: 'a counter of the ops server test', registers: [metricsRegistry] });

  beforeAll(async () => {
    server = await startOpsServer('127.0.0.1', 0, [
      check('flag', async () => ({ ok: ready, detail: ready ? undefined : 'switched off' })),
    ]);
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    metricsRegistry.removeSingleMetric('keel_ops_test_total');
  });

  it('listens on the port it was given (0: any free one)', () => {
    expect((server.address() as AddressInfo).port).toBeGreaterThan(0);
  });

  it('answers /health 200 whatever the checks say', async () => {
    ready = false;
    const res = await fetch(`${base}/health`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/json');
    expect(await res.json()).toEqual({ status: 'ok' });
    ready = true;
  });

  it('answers /ready per the checks', async () => {
    ready = true;
    const ok = await fetch(`${base}/ready`);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ status: 'ready', checks: { flag: { ok: true } } });

    ready = false;
    const down = await fetch(`${base}/ready?verbose=1`);
    expect(down.status).toBe(503);
    expect(await down.json()).toEqual({ status: 'not_ready', checks: { flag: { ok: false, detail: 'switched off' } } });
    ready = true;
  });

  it('answers /metrics in the Prometheus text format with the registry content', async () => {
    counter.inc(3);
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const text = await res.text();
    expect(text).toContain('# TYPE keel_ops_test_total counter');
    expect(text).toMatch(/^keel_ops_test_total 3$/m);
  });

  it('answers 404 with a not_found body for anything else', async () => {
    for (const path of ['/', '/healthz', '/ready/x', '/api/v1/tenants']) {
      const res = await fetch(`${base}${path}`);
      expect(res.status).toBe(404);
      expect(await res.json()).toEqual({ code: 'not_found', message: `No route ${path}` });
    }
  });

  it('rejects when the port is taken', async () => {
    const port = (server.address() as AddressInfo).port;
    await expect(startOpsServer('127.0.0.1', port, [])).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});
