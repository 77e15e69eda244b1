import { AsyncLocalStorage } from 'node:async_hooks';
import { Context, context, ContextManager, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AlwaysOffSampler, BasicTracerProvider, InMemorySpanExporter, ParentBasedSampler, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { EventEmitter } from 'node:events';
import { IncomingMessage, ServerResponse } from 'node:http';
import pino from 'pino';
import { tracedRequestListener } from './http-tracing';
import { createLogger } from './logger';
import { extractTraceContext, HeaderCarrier, injectTraceContext, withSpan } from './trace-context';

/** The AsyncLocalStorage context manager of @opentelemetry/context-async-hooks, in a few lines. */
class AsyncLocalStorageContextManager implements ContextManager {
  private readonly storage = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.storage.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return this.storage.run(ctx, () => fn.apply(thisArg, args));
  }
  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== 'function') return target;
    const manager = this;
    return function (this: unknown, ...args: unknown[]) {
      return manager.with(ctx, () => (target as (...a: unknown[]) => unknown).apply(this, args));
    } as T;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.storage.disable();
    return this;
  }
}

/** A carrier over a Map, shaped like NATS headers (`get` answers '' for a missing key). */
function mapCarrier(map = new Map<string, string>()): HeaderCarrier & { map: Map<string, string> } {
  return { map, get: (k) => map.get(k) ?? '', set: (k, v) => void map.set(k, v) };
}

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
});

afterAll(async () => {
  await provider.shutdown();
  trace.disable();
  propagation.disable();
  context.disable();
});

beforeEach(() => exporter.reset());

const remoteParent = {
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: '00f067aa0ba902b7',
  traceFlags: TraceFlags.SAMPLED,
};

describe('injectTraceContext / extractTraceContext', () => {
  it('carries the active span as a W3C traceparent and reads it back as the remote parent', () => {
    const carrier = mapCarrier();
    const span = trace.wrapSpanContext(remoteParent);
    context.with(trace.setSpan(context.active(), span), () => injectTraceContext(carrier));
    expect(carrier.map.get('traceparent')).toBe(`00-${remoteParent.traceId}-${remoteParent.spanId}-01`);

    const extracted = trace.getSpanContext(extractTraceContext(carrier));
    expect(extracted).toEqual({ ...remoteParent, isRemote: true });
  });

  it('round-trips a span started by the tracer, including an unsampled flag and the tracestate', async () => {
    const carrier = mapCarrier();
    let sent: ReturnType<typeof trace.getSpanContext>;
    await withSpan('publish', {}, async (span) => {
      sent = span.spanContext();
      injectTraceContext(carrier);
    });
    expect(trace.getSpanContext(extractTraceContext(carrier))).toMatchObject({ traceId: sent!.traceId, spanId: sent!.spanId, isRemote: true });

    const unsampled = mapCarrier(new Map([
      ['traceparent', `00-${remoteParent.traceId}-${remoteParent.spanId}-00`],
      ['tracestate', 'vendor=abc'],
    ]));
    const ctx = extractTraceContext(unsampled);
    expect(trace.getSpanContext(ctx)?.traceFlags).toBe(TraceFlags.NONE);
    const again = mapCarrier();
    injectTraceContext(again, ctx);
    expect(again.map.get('traceparent')).toBe(`00-${remoteParent.traceId}-${remoteParent.spanId}-00`);
    expect(again.map.get('tracestate')).toBe('vendor=abc');
  });

  it('injects an explicitly given context rather than the active one', () => {
    const carrier = mapCarrier();
    const given = trace.setSpan(ROOT_CONTEXT, trace.wrapSpanContext(remoteParent));
    injectTraceContext(carrier, given);
    expect(carrier.map.get('traceparent')).toContain(remoteParent.spanId);
  });

  it('injects nothing without an active span, and extracts no parent from missing or malformed headers', () => {
    const carrier = mapCarrier();
    injectTraceContext(carrier);
    expect(carrier.map.size).toBe(0);
    expect(trace.getSpanContext(extractTraceContext(carrier))).toBeUndefined();
    expect(trace.getSpanContext(extractTraceContext(mapCarrier(new Map([['traceparent', 'garbage']]))))).toBeUndefined();
    expect(trace.getSpanContext(extractTraceContext(mapCarrier(new Map([['traceparent', `00-${'0'.repeat(32)}-${remoteParent.spanId}-01`]]))))).toBeUndefined();
  });

  it('without headers, answers the active context', () => {
    const active = trace.setSpan(context.active(), trace.wrapSpanContext(remoteParent));
    context.with(active, () => {
      expect(trace.getSpanContext(extractTraceContext(undefined))).toEqual(remoteParent);
    });
  });
});

describe('withSpan', () => {
  it('runs fn inside the span, a child of the given parent, and answers its value', async () => {
    const parent = extractTraceContext(mapCarrier(new Map([['traceparent', `00-${remoteParent.traceId}-${remoteParent.spanId}-01`]])));
    const value = await withSpan('handle', { kind: SpanKind.SERVER, parent, attributes: { 'keel.subject': 'cmd.x' } }, async (span) => {
      expect(trace.getActiveSpan()).toBe(span);
      await new Promise((r) => setTimeout(r, 5));
      expect(trace.getActiveSpan()).toBe(span); // still active across an await
      return 42;
    });
    expect(value).toBe(42);
    const [span] = exporter.getFinishedSpans();
    expect(span).toBeDefined();
    expect(span!.name).toBe('handle');
    expect(span!.kind).toBe(SpanKind.SERVER);
    expect(span!.attributes['keel.subject']).toBe('cmd.x');
    expect(span!.spanContext().traceId).toBe(remoteParent.traceId);
    expect(span!.parentSpanContext?.spanId).toBe(remoteParent.spanId);
    expect(span!.status.code).not.toBe(SpanStatusCode.ERROR);
    expect(trace.getActiveSpan()).toBeUndefined();
  });

  it('records the exception, marks the span as failed, ends it and rethrows the same error', async () => {
    const error = new TypeError('boom');
    await expect(
      withSpan('failing', {}, async () => {
        throw error;
      }),
    ).rejects.toBe(error);
    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(1);
    expect(spans[0]!.status).toEqual({ code: SpanStatusCode.ERROR, message: 'boom' });
    const exception = spans[0]!.events.find((e) => e.name === 'exception');
    expect(exception?.attributes).toMatchObject({ 'exception.type': 'TypeError', 'exception.message': 'boom' });
  });

  it('with nothing recorded and no trace to continue, runs fn without an active context; a caller\'s trace is still continued', async () => {
    // As Keel runs without an exporter: roots are not sampled, a caller's trace is followed.
    const off = new BasicTracerProvider({ sampler: new ParentBasedSampler({ root: new AlwaysOffSampler() }) });
    trace.disable();
    trace.setGlobalTracerProvider(off);
    try {
      const seen: unknown[] = [];
      const value = await withSpan('untraced', {}, async (span) => {
        expect(span.isRecording()).toBe(false);
        await new Promise((r) => setTimeout(r, 1));
        seen.push(trace.getActiveSpan());
        return 7;
      });
      expect(value).toBe(7);
      expect(seen).toEqual([undefined]);
      // A caller's unsampled traceparent: not recorded either, yet its trace id flows on (logs, headers).
      const parent = extractTraceContext(mapCarrier(new Map([['traceparent', `00-${remoteParent.traceId}-${remoteParent.spanId}-00`]])));
      await withSpan('continued', { parent }, async (span) => {
        expect(span.isRecording()).toBe(false);
        await new Promise((r) => setTimeout(r, 1));
        expect(trace.getActiveSpan()?.spanContext().traceId).toBe(remoteParent.traceId);
      });
    } finally {
      trace.disable();
      trace.setGlobalTracerProvider(provider);
    }
  });

  it('nests: a span started inside another is its child', async () => {
    await withSpan('outer', {}, () => withSpan('inner', {}, async () => undefined));
    const [inner, outer] = exporter.getFinishedSpans();
    expect(inner!.name).toBe('inner');
    expect(inner!.parentSpanContext?.spanId).toBe(outer!.spanContext().spanId);
    expect(inner!.spanContext().traceId).toBe(outer!.spanContext().traceId);
  });
});

describe('createLogger', () => {
  function capture(logger: ReturnType<typeof createLogger>): Record<string, unknown>[] {
    const lines: Record<string, unknown>[] = [];
    (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] = { write: (s: string) => lines.push(JSON.parse(s)) };
    return lines;
  }

  it('writes JSON lines with the service, a textual level and an ISO time', () => {
    const logger = createLogger('tenant', 'info');
    const lines = capture(logger);
    logger.info({ tenantId: 't1' }, 'created');
    logger.debug('not at this level');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ service: 'tenant', level: 'info', msg: 'created', tenantId: 't1' });
    expect(new Date(lines[0]!.time as string).toISOString()).toBe(lines[0]!.time);
    expect(lines[0]).not.toHaveProperty('traceId');
  });

  it('adds the trace and span id of the active span', async () => {
    const logger = createLogger('gateway', 'debug');
    const lines = capture(logger);
    let ids: { traceId: string; spanId: string } | undefined;
    await withSpan('request', {}, async (span) => {
      ids = span.spanContext();
      logger.debug('inside');
    });
    logger.debug('outside');
    expect(lines[0]).toMatchObject({ service: 'gateway', msg: 'inside', traceId: ids!.traceId, spanId: ids!.spanId });
    expect(lines[1]).toMatchObject({ msg: 'outside' });
    expect(lines[1]).not.toHaveProperty('traceId');
  });
});

describe('tracedRequestListener', () => {
  /** Calls the wrapped listener as Node's HTTP server would, and answers the span it ran under. */
  function serve(traceAll: boolean, url: string, headers: Record<string, string> = {}) {
    let active: ReturnType<typeof trace.getSpan>;
    const res = Object.assign(new EventEmitter(), { statusCode: 200 });
    tracedRequestListener(() => (active = trace.getSpan(context.active())), { traceAll })(
      { url, method: 'GET', headers } as unknown as IncomingMessage,
      res as unknown as ServerResponse,
    );
    res.emit('finish');
    return active;
  }
  const traceparent = `00-${remoteParent.traceId}-${remoteParent.spanId}-01`;

  it('traces every request as a SERVER span when spans are exported', () => {
    expect(serve(true, '/api/v1/tenants?limit=1')).toBeDefined();
    expect(exporter.getFinishedSpans().map((s) => [s.name, s.kind, s.attributes['http.response.status_code']])).toEqual([
      ['GET /api/v1/tenants', SpanKind.SERVER, 200],
    ]);
  });

  it('without an exporter, traces only a request that brings a traceparent, as a child of it', () => {
    expect(serve(false, '/api/v1/tenants')).toBeUndefined();
    expect(exporter.getFinishedSpans()).toEqual([]);
    expect(serve(false, '/api/v1/tenants', { traceparent })?.spanContext().traceId).toBe(remoteParent.traceId);
    expect(exporter.getFinishedSpans().map((s) => s.parentSpanContext?.spanId)).toEqual([remoteParent.spanId]);
  });

  it('never traces health, readiness and metrics probes', () => {
    for (const url of ['/health', '/ready', '/metrics']) expect(serve(true, url, { traceparent })).toBeUndefined();
    expect(exporter.getFinishedSpans()).toEqual([]);
  });
});
