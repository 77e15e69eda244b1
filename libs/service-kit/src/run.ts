import { INestApplication, INestApplicationContext } from '@nestjs/common';
import { KeelConfig } from '@keel/config';
import { createServiceApp, KEEL_SERVICE, KeelNatsTransport, MESSAGING, Messaging } from '@keel/messaging';
import { closeOpsServer, initMetrics, Logger, ReadinessCheck, startOpsServer, stopTelemetry } from '@keel/observability';
import { ServiceEntry } from './manifest';
import { SERVICE_READINESS } from './service-module';
import { exitOnSignal, SHUTDOWN_TIMEOUTS } from './shutdown';

const natsCheck = (app: INestApplicationContext): ReadinessCheck => {
  const m = app.get<Messaging>(MESSAGING);
  return { name: 'nats', check: async () => !m.nc.isClosed() && (await m.nc.rtt()) >= 0 };
};

/**
 * Runs a backend service (no public HTTP API): the Nest application with its handlers on the
 * transport (createServiceApp), its ops server on the port KEEL_OPS_PORT or the manifest gives,
 * and an ordered, bounded stop on SIGTERM/SIGINT: the ops server first (probes fail, the
 * orchestrator stops sending), then the application (handlers drain, consumers stop, the
 * service's stop work, projection runners, pools and connections close, in Nest's shutdown
 * order), then telemetry (spans flushed). Each step has a timeout, and a hard deadline exits
 * the process whatever still hangs.
 */
export async function runBackend(module: unknown, entry: ServiceEntry, config: KeelConfig, logger: Logger): Promise<void> {
  initMetrics(entry.name);
  const { app } = await createServiceApp(module, logger);
  const checks = app.get<() => ReadinessCheck[]>(SERVICE_READINESS);
  const ops = await startOpsServer(config.KEEL_HTTP_HOST, config.KEEL_OPS_PORT ?? entry.port, [natsCheck(app), ...checks()]);
  logger.info({ ops: (ops.address() as { port: number }).port }, `${entry.name} service started`);
  exitOnSignal(
    entry.name,
    [
      { name: 'ops server', timeoutMs: SHUTDOWN_TIMEOUTS.opsServer, run: () => closeOpsServer(ops, SHUTDOWN_TIMEOUTS.opsServer) },
      { name: 'application', timeoutMs: SHUTDOWN_TIMEOUTS.application, run: () => app.close() },
      { name: 'telemetry', timeoutMs: SHUTDOWN_TIMEOUTS.telemetry, run: () => stopTelemetry() },
    ],
    logger,
  );
}

/**
 * Runs a gateway: the HTTP application the service made (not yet listening; its /health,
 * /ready and /metrics are its own routes), with Nest's microservices layer connected as in
 * every service (a handler it declares is served in its queue group), listening on
 * KEEL_HTTP_PORT (npm start, compose and infra/k8s set it to the manifest's port); on SIGTERM/SIGINT the application closes (listener,
 * transport, providers) and telemetry flushes, each bounded.
 */
export async function runGateway(app: INestApplication, entry: ServiceEntry, config: KeelConfig, logger: Logger): Promise<void> {
  app.connectMicroservice({
    strategy: new KeelNatsTransport({ messaging: app.get<Messaging>(MESSAGING), service: app.get<string>(KEEL_SERVICE), logger }),
  });
  await app.startAllMicroservices();
  await app.listen(config.KEEL_HTTP_PORT, config.KEEL_HTTP_HOST);
  logger.info({ url: `${config.KEEL_TLS_CERT ? 'https' : 'http'}://${config.KEEL_HTTP_HOST}:${config.KEEL_HTTP_PORT}` }, `${entry.name} listening`);
  exitOnSignal(
    entry.name,
    [
      { name: 'application', timeoutMs: SHUTDOWN_TIMEOUTS.application, run: () => app.close() },
      { name: 'telemetry', timeoutMs: SHUTDOWN_TIMEOUTS.telemetry, run: () => stopTelemetry() },
    ],
    logger,
  );
}
