import { context, propagation, Context, Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';

/** Anything with get/set of string headers (NATS `MsgHdrs` fits). */
export interface HeaderCarrier {
  get(key: string): string;
  set(key: string, value: string): void;
}

export function injectTraceContext(headers: HeaderCarrier, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers, {
    set: (carrier, key, value) => carrier.set(key, value),
  });
}

export function extractTraceContext(headers: HeaderCarrier | undefined): Context {
  if (!headers) return context.active();
  return propagation.extract(context.active(), headers, {
    get: (carrier, key) => carrier.get(key) || undefined,
    keys: () => ['traceparent', 'tracestate'],
  });
}

const tracer = () => trace.getTracer('keel');

/**
 * Runs `fn` in a span (child of `parent` when given), recording failures on it.
 *
 * A span that records nothing and continues no caller's trace (no exporter, no `traceparent` came)
 * is not made the active context: it would correlate nothing, and on Node 20 an active context
 * turns on AsyncLocalStorage's promise hooks, which every promise of the process then pays for.
 * Work that a caller traces, or that is sampled, runs in its span as before.
 */
export async function withSpan<T>(
  name: string,
  options: { kind?: SpanKind; parent?: Context; attributes?: Record<string, string | number | boolean> },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const span = tracer().startSpan(name, { kind: options.kind, attributes: options.attributes }, parent);
  try {
    if (!span.isRecording() && trace.getSpan(parent) === undefined) return await fn(span);
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (error) {
    span.recordException(error as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
    throw error;
  } finally {
    span.end();
  }
}

export { SpanKind } from '@opentelemetry/api';
