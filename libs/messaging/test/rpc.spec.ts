import { Subscription } from 'nats';
import { parseConfig } from '@keel/config';
import { KeelError } from '@keel/contracts';
import { createLogger } from '@keel/observability';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { closeMessaging, connectMessaging, decodeJson, encodeJson, Messaging, RpcClient, serveRpc } from '@keel/messaging';

const logger = createLogger('rpc-test', 'silent');

async function rejection(p: Promise<unknown>): Promise<KeelError> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: KeelError) => error,
  );
}

/** serveRpc and RpcClient over the real NATS, in a queue group. */
describe('request/reply', () => {
  const env = isolatedEnv('rpc');
  const config = parseConfig({ ...env, KEEL_REQUEST_TIMEOUT_MS: '2000' });
  let serverA: Messaging;
  let serverB: Messaging;
  let caller: Messaging;
  let client: RpcClient;
  const subs: Subscription[] = [];
  const handled: { server: string; n: number }[] = [];

  /** The same handler on both servers, in one queue group. */
  function serveOnBoth(subject: string, handler: (server: string, body: unknown) => Promise<unknown>): void {
    subs.push(serveRpc(serverA, subject, 'test-svc', (body) => handler('A', body), logger));
    subs.push(serveRpc(serverB, subject, 'test-svc', (body) => handler('B', body), logger));
  }

  beforeAll(async () => {
    serverA = await connectMessaging(config, 'rpc-server-a');
    serverB = await connectMessaging(config, 'rpc-server-b');
    caller = await connectMessaging(config, 'rpc-caller');
    client = new RpcClient(caller);

    serveOnBoth('qry.test.echo', async (server, body) => {
      handled.push({ server, n: (body as { n: number }).n });
      return { server, body };
    });
    serveOnBoth('cmd.test.refuse', async () => {
      throw new KeelError('slug_taken', 'The slug acme is taken.', [{ field: 'slug', message: 'taken', in: 'body' }]);
    });
    serveOnBoth('cmd.test.crash', async () => {
      throw new Error('secret detail: connection string postgres://x');
    });
    serveOnBoth('qry.test.slow', () => new Promise((r) => setTimeout(() => r('late'), 1_500)));
    serveOnBoth('qry.test.huge', async () => ({ items: Array.from({ length: 600 }, (_, i) => ({ i, pad: 'x'.repeat(4_000) })) }));
    await Promise.all([serverA.nc.flush(), serverB.nc.flush()]);
  });

  afterAll(async () => {
    for (const s of subs) s.unsubscribe();
    await Promise.all([closeMessaging(serverA), closeMessaging(serverB), closeMessaging(caller)]);
    await cleanupEnv(env);
  });

  it('answers each request exactly once, spread over the queue group', async () => {
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, n) => client.request<{ server: string; body: { n: number } }>('qry.test.echo', { n })),
    );
    expect(answers.map((a) => a.body.n)).toEqual(Array.from({ length: 40 }, (_, n) => n));
    expect(handled.map((h) => h.n).sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, n) => n));
    const servers = new Set(answers.map((a) => a.server));
    expect(servers).toEqual(new Set(['A', 'B']));
    for (const a of answers) expect(handled.find((h) => h.n === a.body.n)!.server).toBe(a.server);
  });

  it('listens under the deployment prefix only', async () => {
    const otherPrefix = `${config.KEEL_SUBJECT_PREFIX.slice(0, -1)}_other.`;
    const other = await connectMessaging(parseConfig({ ...env, KEEL_SUBJECT_PREFIX: otherPrefix }), 'rpc-other-prefix');
    try {
      await expect(new RpcClient(other).request('qry.test.echo', { n: 1 }, 500)).rejects.toMatchObject({ code: 'service_unavailable' });
      const raw = await caller.nc.request(`${config.KEEL_SUBJECT_PREFIX}qry.test.echo`, encodeJson({ n: -1 }));
      expect(decodeJson(raw.data)).toMatchObject({ ok: true, value: { body: { n: -1 } } });
    } finally {
      await closeMessaging(other);
    }
  });

  it('carries a KeelError to the caller with its code, message and fields', async () => {
    const error = await rejection(client.request('cmd.test.refuse', {}));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('slug_taken');
    expect(error.status).toBe(409);
    expect(error.message).toBe('The slug acme is taken.');
    expect(error.fields).toEqual([{ field: 'slug', message: 'taken', in: 'body' }]);
  });

  it('answers any other failure as internal, without leaking its message', async () => {
    const error = await rejection(client.request('cmd.test.crash', {}));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('internal');
    expect(error.message).not.toContain('secret');
    expect(error.message).not.toContain('postgres://');
  });

  it('answers a body that is not JSON as validation_failed, and an empty body as {}', async () => {
    const bad = await caller.nc.request(`${config.KEEL_SUBJECT_PREFIX}qry.test.echo`, new TextEncoder().encode('{nope'));
    expect(decodeJson(bad.data)).toMatchObject({ ok: false, error: { code: 'validation_failed' } });
    const empty = await caller.nc.request(`${config.KEEL_SUBJECT_PREFIX}qry.test.echo`);
    expect(decodeJson(empty.data)).toMatchObject({ ok: true, value: { body: {} } });
  });

  it('turns "no responders" into service_unavailable at once', async () => {
    // "At once": long before the request's own timeout, which would also end in service_unavailable.
    const started = Date.now();
    const error = await rejection(client.request('cmd.nobody.listens', {}, 20_000));
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('service_unavailable');
    expect(error.message).toContain('cmd.nobody.listens');
  });

  it('turns a handler slower than the timeout into service_unavailable', async () => {
    const error = await rejection(client.request('qry.test.slow', {}, 300));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('service_unavailable');
    expect(error.message).toBe('qry.test.slow did not answer within 300 ms; try again.');
    await expect(client.request('qry.test.slow', {}, 3_000)).resolves.toBe('late');
  });

  it('answers an answer too large for one message as payload_too_large, and goes on serving', async () => {
    await expect(client.request('qry.test.huge', {})).rejects.toMatchObject({ code: 'payload_too_large', message: expect.stringMatching(/smaller page/) });
    // The serving processes are alive and answer the next request.
    await expect(client.request('qry.test.echo', { n: 999 })).resolves.toMatchObject({ body: { n: 999 } });
  });
});
