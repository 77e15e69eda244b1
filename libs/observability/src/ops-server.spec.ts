import { AddressInfo, connect } from 'node:net';
import { Server } from 'node:http';
import { Counter } from 'prom-client';
import { metricsRegistry } from './metrics';
import { closeOpsServer, readiness, ReadinessCheck, startOpsServer, TimeoutError, withTimeout } from './ops-server';

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

describe('bounded readiness and close', () => {
  it('counts a check that never answers as failed, within its timeout, and still reports the others', async () => {
    const started = Date.now();
    const r = await readiness([check('stuck', () => new Promise<boolean>(() => undefined)), check('fine', async () => true)], 200);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(r.status).toBe(503);
    expect(r.body).toEqual({
      status: 'not_ready',
      checks: { stuck: { ok: false, detail: 'readiness check stuck did not finish within 200 ms' }, fine: { ok: true } },
    });
  });

  it('answers /ready 503 while a dependency hangs, instead of never', async () => {
    const server = await startOpsServer('127.0.0.1', 0, [check('stuck', () => new Promise<boolean>(() => undefined))], { checkTimeoutMs: 150 });
    try {
      const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/ready`, { signal: AbortSignal.timeout(5_000) });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { checks: Record<string, { ok: boolean }> }).checks.stuck!.ok).toBe(false);
    } finally {
      await closeOpsServer(server);
    }
  });

  it('closes within its timeout even while a client holds a connection open', async () => {
    const server = await startOpsServer('127.0.0.1', 0, []);
    const port = (server.address() as AddressInfo).port;
    // A client that sends half a request and waits: server.close() alone would wait for it.
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write('GET /health HTTP/1.1\r\nHost: x\r\n');
    const closedByServer = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const started = Date.now();
    await closeOpsServer(server, 300);
    expect(Date.now() - started).toBeLessThan(2_000);
    await closedByServer;
    expect(server.listening).toBe(false);
  });
});

describe('withTimeout', () => {
  it('passes a value through and rejects with TimeoutError once the time is up', async () => {
    await expect(withTimeout(Promise.resolve(7), 100, 'x')).resolves.toBe(7);
    await expect(withTimeout(new Promise(() => undefined), 50, 'the thing')).rejects.toEqual(new TimeoutError('the thing did not finish within 50 ms'));
  });
});
