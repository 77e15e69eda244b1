import { NodeSDK } from '@opentelemetry/sdk-node';
import { AlwaysOffSampler, BatchSpanProcessor, ParentBasedSampler, ReadableSpan, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { W3CTraceContextPropagator } from '@opentelemetry/core';

/**
 * Keeps trace context alive (ids in logs, headers on NATS) when nothing exports spans, for
 * work that continues a caller's trace: RPCs, deliveries and HTTP requests that bring a
 * `traceparent` (see withSpan for work that brings none).
 */
class DiscardingSpanProcessor implements SpanProcessor {
  onStart(): void {}
  onEnd(_span: ReadableSpan): void {}
  async forceFlush(): Promise<void> {}
  async shutdown(): Promise<void> {}
}

let sdk: NodeSDK | undefined;
let exporting = false;

/** Whether this process exports spans (telemetry started with an OTLP endpoint). */
export function exportsSpans(): boolean {
  return exporting;
}

export interface TelemetryOptions {
  serviceName: string;
  /** OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); spans are only exported when set. */
  otlpEndpoint?: string;
}

/**
 * Starts the OpenTelemetry NodeSDK. Call it first in main.ts, before Nest or any
 * instrumented module is loaded.
 */
export function startTelemetry(options: TelemetryOptions): NodeSDK {
  if (sdk) return sdk;
  exporting = Boolean(options.otlpEndpoint);
  const processor: SpanProcessor = options.otlpEndpoint
    ? new BatchSpanProcessor(
        new OTLPTraceExporter({ url: `${options.otlpEndpoint.replace(/\/$/, '')}/v1/traces` }),
        { scheduledDelayMillis: 500 },
      )
    : new DiscardingSpanProcessor();
  sdk = new NodeSDK({
    serviceName: options.serviceName,
    spanProcessors: [processor],
    // Nothing exports spans: keep trace ids flowing (logs, headers) without recording spans,
    // unless a caller's traceparent asks for it. With an exporter, OTEL_TRACES_SAMPLER decides.
    ...(options.otlpEndpoint ? {} : { sampler: new ParentBasedSampler({ root: new AlwaysOffSampler() }) }),
    textMapPropagator: new W3CTraceContextPropagator(),
    // HTTP server spans come from tracedRequestListener; NATS spans from the messaging lib.
    instrumentations: [],
  });
  sdk.start();
  return sdk;
}

export async function stopTelemetry(): Promise<void> {
  await sdk?.shutdown().catch(() => undefined);
  sdk = undefined;
  exporting = false;
}
