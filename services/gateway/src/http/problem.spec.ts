import {
  BadRequestException,
  ConflictException,
  ForbiddenException,
  HttpException,
  InternalServerErrorException,
  NotFoundException,
  PayloadTooLargeException,
  ServiceUnavailableException,
  UnauthorizedException,
  UnsupportedMediaTypeException,
} from '@nestjs/common';
import { AddressInfo, createServer } from 'node:net';
import Redis from 'ioredis';
import { trace } from '@opentelemetry/api';
import { errorCodes, FastifyError } from 'fastify';
import { ErrorCode, errorCatalogue, KeelError } from '@keel/contracts';
import { fromFastifyError, problem, ProblemFilter, sendProblem, toKeelError, validationError } from './problem';
import { ReplayedResponse } from './replayed-response';

function fastifyError(name: keyof typeof errorCodes): FastifyError {
  const ErrorClass = errorCodes[name] as unknown as new () => FastifyError;
  return new ErrorClass();
}

/** A Fastify reply that records what was sent. */
function fakeReply() {
  const sent: { status?: number; headers: Record<string, string>; type?: string; body?: unknown } = { headers: {} };
  const reply = {
    status(code: number) {
      sent.status = code;
      return reply;
    },
    headers(h: Record<string, string>) {
      Object.assign(sent.headers, h);
      return reply;
    },
    type(t: string) {
      sent.type = t;
      return reply;
    },
    send(body: unknown) {
      sent.body = body;
      return reply;
    },
  };
  return { reply, sent };
}

afterEach(() => jest.restoreAllMocks());

describe('problem', () => {
  it('has the RFC 9457 members plus the stable code and every offending field', () => {
    const fields = [
      { field: 'slug', message: 'must match ^[a-z][a-z0-9-]{2,62}$', in: 'body' as const },
      { field: 'limit', message: 'too big', in: 'query' as const },
    ];
    const body = problem(new KeelError('validation_failed', 'The request is invalid.', fields), '/api/v1/tenants');
    expect(body).toEqual({
      type: 'https://keel.dev/problems/validation-failed',
      title: 'Invalid request',
      status: 400,
      detail: 'The request is invalid.',
      instance: '/api/v1/tenants',
      code: 'validation_failed',
      errors: fields,
    });
  });

  it('leaves errors out when there are no fields, and traceId out when there is no span', () => {
    const body = problem(new KeelError('version_mismatch', 'The resource is at version 3, not 2.'), '/api/v1/tenants/x');
    expect(body).toEqual({
      type: 'https://keel.dev/problems/version-mismatch',
      title: 'Version mismatch',
      status: 412,
      detail: 'The resource is at version 3, not 2.',
      instance: '/api/v1/tenants/x',
      code: 'version_mismatch',
    });
  });

  it('carries the trace id of the active span', () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    jest.spyOn(trace, 'getActiveSpan').mockReturnValue(trace.wrapSpanContext({ traceId, spanId: '00f067aa0ba902b7', traceFlags: 1 }));
    expect(problem(new KeelError('internal', 'x'), '/')).toMatchObject({ traceId });
  });

  it.each(Object.keys(errorCatalogue) as ErrorCode[])('gives %s a title, a kebab-case type and its catalogue status', (code) => {
    const body = problem(new KeelError(code, 'x'), '/');
    expect(body.title).toEqual(expect.any(String));
    expect(body.title.length).toBeGreaterThan(0);
    expect(body.type).toBe(`https://keel.dev/problems/${code.replace(/_/g, '-')}`);
    expect(body.type).not.toContain('_');
    expect(body.status).toBe(errorCatalogue[code]);
  });
});

describe('sendProblem', () => {
  it('answers with the status and application/problem+json', () => {
    const { reply, sent } = fakeReply();
    sendProblem(reply as never, new KeelError('not_found', 'No such tenant.'), '/api/v1/tenants/x');
    expect(sent.status).toBe(404);
    expect(sent.type).toBe('application/problem+json');
    expect(sent.headers).toEqual({});
    expect(sent.body).toMatchObject({ code: 'not_found', status: 404, instance: '/api/v1/tenants/x' });
  });

  it('challenges a 401 with a Bearer WWW-Authenticate header', () => {
    const { reply, sent } = fakeReply();
    sendProblem(reply as never, new KeelError('unauthorized', 'Log in.'), '/');
    expect(sent.status).toBe(401);
    expect(sent.headers['www-authenticate']).toBe('Bearer realm="keel"');
  });

  it.each(['service_unavailable', 'consistency_timeout'] as ErrorCode[])('asks the client to retry a 503 (%s)', (code) => {
    const { reply, sent } = fakeReply();
    sendProblem(reply as never, new KeelError(code, 'later'), '/');
    expect(sent.status).toBe(503);
    expect(sent.headers['retry-after']).toBe('1');
  });
});

describe('fromFastifyError', () => {
  it.each([
    ['FST_ERR_CTP_BODY_TOO_LARGE', 'payload_too_large', 413],
    ['FST_ERR_CTP_INVALID_MEDIA_TYPE', 'unsupported_media_type', 415],
    ['FST_ERR_CTP_EMPTY_JSON_BODY', 'bad_json', 400],
    ['FST_ERR_CTP_INVALID_JSON_BODY', 'bad_json', 400],
    ['FST_ERR_CTP_INVALID_CONTENT_LENGTH', 'validation_failed', 400],
  ] as const)('maps Fastify’s %s to %s (%i)', (name, code, status) => {
    const error = fromFastifyError(fastifyError(name));
    expect(error).toBeInstanceOf(KeelError);
    expect(error!.code).toBe(code);
    expect(error!.status).toBe(status);
  });

  it('maps a JSON SyntaxError to bad_json, quoting the parser', () => {
    let syntaxError: SyntaxError | undefined;
    try {
      JSON.parse('{"a":');
    } catch (e) {
      syntaxError = e as SyntaxError;
    }
    const error = fromFastifyError(syntaxError as unknown as FastifyError);
    expect(error?.code).toBe('bad_json');
    expect(error?.message).toContain(syntaxError!.message);
  });

  it('leaves other Fastify errors to the caller', () => {
    expect(fromFastifyError(fastifyError('FST_ERR_CTP_INVALID_PARSE_TYPE'))).toBeUndefined();
    expect(fromFastifyError({ code: 'FST_ERR_SOMETHING_ELSE' } as FastifyError)).toBeUndefined();
  });
});

describe('toKeelError', () => {
  it('passes a KeelError through unchanged', () => {
    const e = new KeelError('slug_taken', 'Taken.');
    expect(toKeelError(e)).toBe(e);
  });

  it('maps a Nest 404 to not_found, pointing at the API document', () => {
    const error = toKeelError(new NotFoundException('Cannot GET /nope'));
    expect(error?.code).toBe('not_found');
    expect(error?.status).toBe(404);
    expect(error?.message).toContain('/openapi.json');
  });

  it('maps a Nest 400 about JSON to bad_json', () => {
    const error = toKeelError(new BadRequestException('Unexpected token } in JSON at position 5'));
    expect(error?.code).toBe('bad_json');
    expect(error?.status).toBe(400);
    expect(error?.message).toContain('Unexpected token } in JSON at position 5');
  });

  it('maps any other Nest 400 to validation_failed', () => {
    expect(toKeelError(new BadRequestException('missing header'))?.code).toBe('validation_failed');
  });

  it('maps a Nest 413 to payload_too_large and a 415 to unsupported_media_type', () => {
    expect(toKeelError(new PayloadTooLargeException())).toMatchObject({ code: 'payload_too_large', status: 413 });
    expect(toKeelError(new UnsupportedMediaTypeException())).toMatchObject({ code: 'unsupported_media_type', status: 415 });
  });

  it.each([
    [new UnauthorizedException(), 'unauthorized'],
    [new ForbiddenException(), 'forbidden'],
    [new ConflictException(), 'conflict'],
    [new ServiceUnavailableException(), 'service_unavailable'],
    [new InternalServerErrorException(), 'internal'],
  ])('maps %s to the first code of its status', (exception, code) => {
    expect(toKeelError(exception)?.code).toBe(code);
  });

  it('maps a raw Fastify error', () => {
    expect(toKeelError(fastifyError('FST_ERR_CTP_BODY_TOO_LARGE'))?.code).toBe('payload_too_large');
    expect(toKeelError(fastifyError('FST_ERR_CTP_INVALID_JSON_BODY'))?.code).toBe('bad_json');
  });

  it('leaves anything else to the filter as an internal error', () => {
    expect(toKeelError(new Error('boom'))).toBeUndefined();
    expect(toKeelError(new TypeError('x is not a function'))).toBeUndefined();
    expect(toKeelError(null)).toBeUndefined();
    expect(toKeelError('boom')).toBeUndefined();
    expect(toKeelError(undefined)).toBeUndefined();
  });
});

describe('ProblemFilter', () => {
  function hostFor(url: string) {
    const { reply, sent } = fakeReply();
    const host = { switchToHttp: () => ({ getRequest: () => ({ url }), getResponse: () => reply }) };
    return { host: host as never, sent };
  }

  it('answers a KeelError as problem+json', () => {
    const logger = { error: jest.fn() };
    const { host, sent } = hostFor('/api/v1/tenants');
    new ProblemFilter(logger as never).catch(new KeelError('tenant_closed', 'Closed.'), host);
    expect(sent.status).toBe(409);
    expect(sent.body).toMatchObject({ code: 'tenant_closed', instance: '/api/v1/tenants' });
    expect(logger.error).not.toHaveBeenCalled();
  });

  it('logs an unknown error and answers a generic 500 that leaks nothing', () => {
    const logger = { error: jest.fn() };
    const { host, sent } = hostFor('/api/v1/x');
    const boom = new Error('password=hunter2');
    new ProblemFilter(logger as never).catch(boom, host);
    expect(sent.status).toBe(500);
    expect(sent.body).toMatchObject({ code: 'internal', status: 500 });
    expect(JSON.stringify(sent.body)).not.toContain('hunter2');
    expect(logger.error).toHaveBeenCalledWith(expect.objectContaining({ err: boom, url: '/api/v1/x' }), 'unhandled error');
  });

  it('replays a stored answer as it was sent the first time', () => {
    const logger = { error: jest.fn() };
    const first = hostFor('/api/v1/tenants');
    new ProblemFilter(logger as never).catch(new ReplayedResponse(201, { id: 't1' }, false), first.host);
    expect(first.sent).toMatchObject({ status: 201, type: 'application/json', body: { id: 't1' } });

    const second = hostFor('/api/v1/tenants');
    new ProblemFilter(logger as never).catch(new ReplayedResponse(409, { code: 'slug_taken' }, true), second.host);
    expect(second.sent).toMatchObject({ status: 409, type: 'application/problem+json', body: { code: 'slug_taken' } });
  });
});

describe('validationError', () => {
  it('is validation_failed with every field and where it is', () => {
    const error = validationError([
      { field: 'slug', message: 'too short' },
      { field: 'limit', message: 'too big', in: 'query' },
    ]);
    expect(error.code).toBe('validation_failed');
    expect(error.fields).toHaveLength(2);
    expect(error.message).toBe('The request is invalid: body slug: too short; query limit: too big');
  });
});

describe('an outage of what the gateway reaches itself', () => {
  it('answers an error of an unreachable Redis as 503 with Retry-After, not 500', async () => {
    // A real ioredis client towards a port nothing listens on, configured as the gateway's is.
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const redis = new Redis(`redis://127.0.0.1:${port}`, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, retryStrategy: () => null });
    redis.on('error', () => undefined);
    try {
      const error = await redis.get('k').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(Error);
      expect(toKeelError(error)).toMatchObject({ code: 'service_unavailable', status: 503 });

      const logger = { error: jest.fn() };
      const { reply, sent } = fakeReply();
      const host = { switchToHttp: () => ({ getRequest: () => ({ url: '/api/v1/auth/sign-in' }), getResponse: () => reply }) };
      new ProblemFilter(logger as never).catch(error, host as never);
      expect(sent.status).toBe(503);
      expect(sent.headers['retry-after']).toBe('1');
      expect(sent.body).toMatchObject({ code: 'service_unavailable' });
      expect(logger.error).not.toHaveBeenCalled();
    } finally {
      redis.disconnect();
    }
  });

  it.each([
    ['a refused TCP connection', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect' })],
    ['a Postgres shutdown', Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' })],
  ])('answers %s as service_unavailable', (_what, error) => {
    expect(toKeelError(error)).toMatchObject({ code: 'service_unavailable', status: 503 });
  });

  it('keeps a bug a bug', () => {
    expect(toKeelError(Object.assign(new Error('duplicate key'), { code: '23505' }))).toBeUndefined();
    expect(toKeelError(new RangeError('Invalid time value'))).toBeUndefined();
  });
});
