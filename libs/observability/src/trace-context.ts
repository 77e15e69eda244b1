import { context, propagation, Context, Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { exportsSpans } from './telemetry';

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
 * When nothing exports spans and no caller's trace is continued (no `traceparent` came), the span
 * records nothing and is not made the active context: on Node 20 an active context turns on
 * AsyncLocalStorage's promise hooks, which every promise of the process then pays for. What that
 * gives up: such work has no trace id in its logs nor in what it sends on (its RPCs, its events);
 * the envelope's `correlationId` still ties them together. A process that has once run work in a
 * context (a traced request) keeps paying for the hooks (Node 20 never turns them off again). With
 * an exporter, or a caller's trace, the span is the active context as before, so sampling stays
 * consistent downstream.
 */
export async function withSpan<T>(
  name: string,
  options: { kind?: SpanKind; parent?: Context; attributes?: Record<string, string | number | boolean> },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const span = tracer().startSpan(name, { kind: options.kind, attributes: options.attributes }, parent);
  try {
    if (!exportsSpans() && !span.isRecording() && trace.getSpan(parent) === undefined && parent === context.active()) return await fn(span);
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
