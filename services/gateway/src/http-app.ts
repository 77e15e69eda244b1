import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Histogram } from 'prom-client';
import { KeelConfig } from '@keel/config';
import { initMetrics, Logger, metricsRegistry, NestPinoLogger, tracedRequestListener } from '@keel/observability';
import { createServer, RequestListener } from 'node:http';
import { gatewayModule } from './app.module';
import { refuseBadUrl } from './http/validate-request';
import { DenialRecorder, recordDenials } from './http/denials';

const BODY_LIMIT = 64 * 1024;

/**
 * The gateway's HTTP application on Fastify (body limit, request metrics, tracing hook), not yet
 * listening: the service kit connects the transport, listens and stops it (see main.ts).
 */
export async function createGatewayApp(config: KeelConfig, logger: Logger): Promise<NestFastifyApplication> {
  initMetrics('gateway');
  const duration = new Histogram({
    name: 'keel_http_request_duration_seconds',
    help: 'HTTP request duration by route and status',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [metricsRegistry],
  });
  const adapter = new FastifyAdapter({
    bodyLimit: BODY_LIMIT,
    trustProxy: false,
    frameworkErrors: refuseBadUrl,
    // Without an exporter, only requests that bring a traceparent are traced (see tracedRequestListener).
    serverFactory: (handler: RequestListener) => createServer(tracedRequestListener(handler, { traceAll: Boolean(config.OTEL_EXPORTER_OTLP_ENDPOINT) })),
  });
  const fastify = adapter.getInstance();
  fastify.addHook('onResponse', (req, reply, done) => {
    duration.observe(
      { method: req.method, route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
    done();
  });
  const app = await NestFactory.create<NestFastifyApplication>(gatewayModule(config, logger), adapter, {
    logger: new NestPinoLogger(logger),
  });
  // Before the routes are registered (at listen): every route's 403 is heard.
  recordDenials(fastify, app.get(DenialRecorder));
  return app;
}
