import { lastValueFrom, of, throwError } from 'rxjs';
import { KeelError } from '@keel/contracts';
import { commandIdFor, DONE_TTL_SECONDS, IdempotencyInterceptor, PENDING_MARGIN_MS } from './idempotency.interceptor';
import { commandMeta, KeelRequest } from './request-context';
import { ReplayedResponse } from './replayed-response';

const TIMEOUT_MS = 2_500;
const config = { KEEL_REQUEST_TIMEOUT_MS: TIMEOUT_MS, KEEL_REDIS_PREFIX: 'p:' };

/** Redis as the interceptor uses it (SET with options, GET, DEL), in memory, with every call recorded. */
class FakeRedis {
  readonly data = new Map<string, string>();
  readonly calls: unknown[][] = [];
  /** 'down': every call fails at once; 'silent': no call ever answers. */
  mode: 'up' | 'down' | 'silent' = 'up';

  private async answer<T>(args: unknown[], value: () => T): Promise<T> {
    this.calls.push(args);
    if (this.mode === 'down') throw new Error("Stream isn't writeable and enableOfflineQueue options is false");
    if (this.mode === 'silent') return new Promise<T>(() => undefined);
    return value();
  }

  set(key: string, value: string, ...options: (string | number)[]) {
    return this.answer(['set', key, ...options], () => {
      if (options.includes('NX') && this.data.has(key)) return null;
      this.data.set(key, value);
      return 'OK';
    });
  }

  get(key: string) {
    return this.answer(['get', key], () => this.data.get(key) ?? null);
  }

  del(key: string) {
    return this.answer(['del', key], () => Number(this.data.delete(key)));
  }
}

function request(key: string | undefined, body: unknown = { slug: 'acme' }): KeelRequest {
  return {
    method: 'POST',
    url: '/api/v1/tenants',
    routeOptions: { url: '/api/v1/tenants' },
    headers: key === undefined ? {} : { 'idempotency-key': key },
    body,
    correlationId: 'req-1',
    principal: { actor: { kind: 'user', id: 'u-1' }, permissions: '*', tenantId: 'platform', crossTenant: true },
  } as unknown as KeelRequest;
}

function reply() {
  const headers: Record<string, string> = {};
  return { statusCode: 201, headers, header: (k: string, v: string) => ((headers[k] = v), undefined), getHeader: (k: string) => headers[k] };
}

/** Runs one request through the interceptor; `handle` stands for the route (it sees the request as the route would). */
async function call(
  interceptor: IdempotencyInterceptor,
  req: KeelRequest,
  res: ReturnType<typeof reply>,
  handle: (req: KeelRequest) => ReturnType<typeof of> = () => of({ tenant: { id: 't1' } }),
) {
  const context = {
    getHandler: () => undefined,
    switchToHttp: () => ({ getRequest: () => req, getResponse: () => res }),
  };
  return lastValueFrom(interceptor.intercept(context as never, { handle: () => handle(req) }));
}

function setup() {
  const redis = new FakeRedis();
  const reflector = { get: () => ({ idempotent: true }) };
  const interceptor = new IdempotencyInterceptor(reflector as never, redis as never, config as never);
  return { redis, interceptor };
}

async function failure(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the request to fail');
}

describe('IdempotencyInterceptor', () => {
  it('gives the command an id derived from the key and its scope, the same in every replica', async () => {
    const { interceptor } = setup();
    const seen: (string | undefined)[] = [];
    const route = (req: KeelRequest) => (seen.push(commandMeta(req).commandId), of({}));

    await call(interceptor, request('k-1'), reply(), route);
    await call(setup().interceptor, request('k-1'), reply(), route);
    await call(interceptor, request('k-2'), reply(), route);
    await call(interceptor, request(undefined), reply(), route);

    expect(seen[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(seen[1]).toBe(seen[0]);
    expect(seen[2]).not.toBe(seen[0]);
    expect(seen[3]).toBeUndefined();
    expect(commandIdFor('a\nb')).toBe(commandIdFor('a\nb'));
    expect(commandIdFor('a\nb')).not.toBe(commandIdFor('a\nc'));
  });

  it('marks the key pending for the request timeout plus a margin, and keeps the answer 24 hours', async () => {
    const { redis, interceptor } = setup();

    await call(interceptor, request('k-1'), reply());

    const [claim, done] = redis.calls;
    expect(claim).toEqual(['set', expect.stringMatching(/^p:idem:[0-9a-f]{64}$/), 'PX', TIMEOUT_MS + PENDING_MARGIN_MS, 'NX']);
    expect(done).toEqual(['set', claim![1], 'EX', DONE_TTL_SECONDS]);
    expect(JSON.parse(redis.data.get(claim![1] as string)!)).toMatchObject({ state: 'done', status: 201, body: { tenant: { id: 't1' } } });
  });

  it('replays the first answer, refuses another request with the key (422) and a retry while pending (409 with Retry-After)', async () => {
    const { redis, interceptor } = setup();
    const first = reply();
    first.header('location', '/api/v1/tenants/t1');
    await call(interceptor, request('k-1'), first);
    const route = jest.fn(() => of({}));

    const res = reply();
    const replayed = await failure(call(interceptor, request('k-1'), res, route));
    const reused = await failure(call(interceptor, request('k-1', { slug: 'other' }), reply(), route));
    const key = [...redis.data.keys()][0]!;
    redis.data.set(key, JSON.stringify({ state: 'pending', fingerprint: JSON.parse(redis.data.get(key)!).fingerprint }));
    const busy = reply();
    const pending = await failure(call(interceptor, request('k-1'), busy, route));

    expect(replayed).toBeInstanceOf(ReplayedResponse);
    expect(replayed).toMatchObject({ status: 201, body: { tenant: { id: 't1' } }, problem: false });
    expect(res.headers['idempotent-replayed']).toBe('true');
    // The same answer: its Location too.
    expect(res.headers['location']).toBe('/api/v1/tenants/t1');
    expect((reused as KeelError).code).toBe('idempotency_key_reused');
    expect((pending as KeelError).code).toBe('idempotency_in_progress');
    expect(busy.headers['retry-after']).toBe(String(Math.ceil((TIMEOUT_MS + PENDING_MARGIN_MS) / 1000)));
    expect(route).not.toHaveBeenCalled();
  });

  it('keeps a client error as the answer, and releases the key after a 5xx so the retry asks the service again', async () => {
    const { redis, interceptor } = setup();
    const refused = await failure(call(interceptor, request('k-1'), reply(), () => throwError(() => new KeelError('slug_taken', 'taken'))));
    const unavailable = await failure(call(interceptor, request('k-2'), reply(), () => throwError(() => new KeelError('service_unavailable', 'down'))));

    expect((refused as KeelError).code).toBe('slug_taken');
    expect((unavailable as KeelError).code).toBe('service_unavailable');
    expect([...redis.data.values()].map((v) => JSON.parse(v))).toEqual([expect.objectContaining({ state: 'done', status: 409, problem: true })]);
    const retried = jest.fn(() => of({ tenant: { id: 't2' } }));
    expect(await call(interceptor, request('k-2'), reply(), retried)).toEqual({ tenant: { id: 't2' } });
    expect(retried).toHaveBeenCalledTimes(1);
  });

  it('with Redis down, lets the request through with its command id instead of answering 503', async () => {
    const { redis, interceptor } = setup();
    redis.mode = 'down';
    let commandId: string | undefined;

    const body = await call(interceptor, request('k-1'), reply(), (req) => ((commandId = commandMeta(req).commandId), of({ ok: true })));

    expect(body).toEqual({ ok: true });
    expect(commandId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('with Redis silent, lets the request through after a bounded wait', async () => {
    const { redis, interceptor } = setup();
    redis.mode = 'silent';
    const started = Date.now();

    const body = await call(interceptor, request('k-1'), reply(), () => of({ ok: true }));

    expect(body).toEqual({ ok: true });
    expect(Date.now() - started).toBeLessThan(2_900);
  });
});
