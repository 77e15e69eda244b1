import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Histogram } from 'prom-client';
import { KeelConfig } from '@keel/config';
import { initMetrics, Logger, metricsRegistry, NestPinoLogger, tracedRequestListener } from '@keel/observability';
import Redis from 'ioredis';
import { createServer, RequestListener } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { allRoutes } from '@keel/contracts';
import { gatewayModule } from './app.module';
import { refuseBadUrl } from './http/validate-request';
import { DenialRecorder, recordDenials } from './http/denials';
import { answerClientError, tlsOptions, trustProxyOption } from './http/edge';
import { registerPublicRateLimit } from './http/public-rate-limit';
import { RateLimiter } from './http/rate-limiter';
import { Admission } from './http/admission';
import { directRoutes, registerDirectRoutes } from './http/direct-routes';
import { TenantDirectory } from './tenants/tenant-directory';

const BODY_LIMIT = 64 * 1024;
/** Request line and headers together (Node's default, said here because the 431 answer names it). */
const MAX_HEADER_SIZE = 16 * 1024;

/**
 * The gateway's HTTP application on Fastify (body limit, request metrics, tracing hook), not yet
 * listening: the service kit connects the transport, listens and stops it (see main.ts).
 * The edge: X-Forwarded-For from KEEL_TRUSTED_PROXIES only, TLS when KEEL_TLS_CERT/KEY are set,
 * the per-address limit on public routes, and problem+json for what Node and Fastify refuse
 * before a route runs (see http/edge.ts).
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
  const tls = tlsOptions(config);
  const adapter = new FastifyAdapter({
    // No Nest middleware anywhere (guards, interceptors and Fastify hooks instead): no middie hook per request.
    skipMiddie: true,
    bodyLimit: BODY_LIMIT,
    trustProxy: trustProxyOption(config),
    frameworkErrors: refuseBadUrl,
    clientErrorHandler: answerClientError,
    // Without an exporter, only requests that bring a traceparent are traced (see tracedRequestListener).
    serverFactory: (handler: RequestListener) => {
      const listener = tracedRequestListener(handler, { traceAll: Boolean(config.OTEL_EXPORTER_OTLP_ENDPOINT) });
      return tls ? createTlsServer({ ...tls, maxHeaderSize: MAX_HEADER_SIZE }, listener) : createServer({ maxHeaderSize: MAX_HEADER_SIZE }, listener);
    },
  });
  const fastify = adapter.getInstance();
  // One labelled child per method, route and status, looked up by a plain key (labels are not hashed per request).
  const series = new Map<string, { observe(v: number): void }>();
  fastify.addHook('onResponse', (req, reply, done) => {
    const route = req.routeOptions.url ?? 'unmatched';
    const key = `${req.method} ${reply.statusCode} ${route}`;
    let child = series.get(key);
    if (!child) {
      child = duration.labels({ method: req.method, route, status: String(reply.statusCode) });
      series.set(key, child);
    }
    child.observe(reply.elapsedTime / 1000);
    done();
  });
  const app = await NestFactory.create<NestFastifyApplication>(gatewayModule(config, logger), adapter, {
    logger: new NestPinoLogger(logger),
  });
  // Before the routes are registered (at listen): every route's 403 is heard.
  recordDenials(fastify, app.get(DenialRecorder));
  // Also before the routes: every public route that does work is limited per client address.
  registerPublicRateLimit(fastify, {
    limiter: new RateLimiter(app.get(Redis), `${config.KEEL_REDIS_PREFIX}public:`),
    limitPerMinute: config.KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE,
    routes: allRoutes(),
    logger,
  });
  // Hot reads on Fastify directly, with the same admission as every Nest route (see http/direct-routes.ts).
  registerDirectRoutes(fastify, { admission: app.get(Admission), logger, routes: directRoutes({ directory: app.get(TenantDirectory) }) });
  return app;
}
