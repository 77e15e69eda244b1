import { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';

const UNTRACED = /^\/(health|ready|metrics)\b/;
const headerGetter = {
  get: (carrier: IncomingMessage['headers'], key: string) => {
    const v = carrier[key];
    return Array.isArray(v) ? v[0] : v;
  },
  keys: (carrier: IncomingMessage['headers']) => Object.keys(carrier),
};

export interface TracedListenerOptions {
  /**
   * Trace every request (spans are exported). When false, only requests that carry a caller's
   * `traceparent` are traced: with nothing exporting spans, a request of its own would only
   * pay for a context it never uses (on Node 20 that context costs the gateway about a
   * quarter of its throughput).
   */
  traceAll: boolean;
}

/**
 * Wraps an HTTP server's request listener so each request is a SERVER span, a child of the
 * caller's `traceparent`, and everything the request does runs in its context. Leaner than
 * the generic http instrumentation, which costs the gateway a fifth of its throughput.
 */
export function tracedRequestListener(listener: RequestListener, options: TracedListenerOptions = { traceAll: true }): RequestListener {
  const tracer = trace.getTracer('keel-http');
  return (req: IncomingMessage, res: ServerResponse) => {
    if (UNTRACED.test(req.url ?? '')) return listener(req, res);
    if (!options.traceAll && req.headers.traceparent === undefined) return listener(req, res);
    const parent = propagation.extract(context.active(), req.headers, headerGetter);
    const span = tracer.startSpan(`${req.method} ${(req.url ?? '/').split('?')[0]}`, { kind: SpanKind.SERVER }, parent);
    res.once('finish', () => {
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    context.with(trace.setSpan(parent, span), () => listener(req, res));
  };
}
