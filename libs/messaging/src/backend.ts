import { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { INestMicroservice } from '@nestjs/common';
import { KeelConfig } from '@keel/config';
import { closeOpsServer, initMetrics, Logger, NestPinoLogger, ReadinessCheck, startOpsServer, stopTelemetry, withTimeout } from '@keel/observability';
import { Messaging } from './connection';
import { KEEL_SERVICE, MESSAGING } from './nest';
import { KeelNatsTransport, KeelRpcExceptionFilter } from './transport';

/**
 * The Nest application of a service with its `@MessagePattern`/`@EventPattern` handlers served
 * by KeelNatsTransport over the service's own connection (MessagingModule's), in the queue group
 * MessagingModule names. Listening starts after the application's bootstrap hooks; closing the
 * application closes the transport first (no new requests, those in flight answered, event
 * consumers stopped), then the providers (pools, the NATS connection) in Nest's order.
 */
export async function createServiceApp(module: unknown, logger: Logger): Promise<{ app: INestMicroservice; transport: KeelNatsTransport }> {
  let app: INestMicroservice | undefined;
  const transport = new KeelNatsTransport({
    messaging: () => app!.get<Messaging>(MESSAGING),
    service: () => app!.get<string>(KEEL_SERVICE),
    logger,
  });
  app = await NestFactory.createMicroservice<never>(module as never, { strategy: transport, logger: new NestPinoLogger(logger) } as never);
  app.useGlobalFilters(new KeelRpcExceptionFilter());
  await app.listen();
  return { app, transport };
}

export interface BackendOptions {
  name: string;
  /** The ops port (/health, /ready, /metrics) when KEEL_OPS_PORT is not set. */
  defaultOpsPort: number;
  /** Readiness checks beyond NATS, given the running application. */
  checks(app: INestApplicationContext): ReadinessCheck[];
}

/** One step of a shutdown: what it is, the work, and how long it may take. */
export interface ShutdownStep {
  name: string;
  timeoutMs: number;
  run(): Promise<unknown>;
}

/**
 * Runs `steps` one after another, each bounded by its own timeout: a step that fails or hangs
 * is logged and abandoned, and the next one still runs. Resolves with the names of the steps
 * that did not finish cleanly.
 */
export async function orderedShutdown(steps: ShutdownStep[], logger: Pick<Logger, 'warn'>): Promise<string[]> {
  const failed: string[] = [];
  for (const step of steps) {
    try {
      await withTimeout(Promise.resolve().then(() => step.run()), step.timeoutMs, `shutdown step "${step.name}"`);
    } catch (err) {
      failed.push(step.name);
      logger.warn({ err, step: step.name }, `shutdown step "${step.name}" did not finish; going on`);
    }
  }
  return failed;
}

/** Time limits of a backend's shutdown; the whole never exceeds `SHUTDOWN_DEADLINE_MS`. */
export const SHUTDOWN_TIMEOUTS = { opsServer: 2_000, application: 10_000, telemetry: 3_000 } as const;
export const SHUTDOWN_DEADLINE_MS = 20_000;

/**
 * Runs a backend service (no public HTTP API): the Nest application (createServiceApp), its ops server,
 * and an ordered, bounded stop on SIGTERM/SIGINT: the ops server first (probes fail, the
 * orchestrator stops sending), then the application (handlers drain, consumers stop, pools and
 * connections close, in Nest's shutdown order), then telemetry (spans flushed). Each step has
 * a timeout, and a hard deadline exits the process whatever still hangs.
 */
export async function runBackend(module: unknown, config: KeelConfig, logger: Logger, o: BackendOptions): Promise<void> {
  initMetrics(o.name);
  const { app } = await createServiceApp(module, logger);
  const m = app.get<Messaging>(MESSAGING);
  const ops = await startOpsServer(config.KEEL_HTTP_HOST, config.KEEL_OPS_PORT ?? o.defaultOpsPort, [
    { name: 'nats', check: async () => !m.nc.isClosed() && (await m.nc.rtt()) >= 0 },
    ...o.checks(app),
  ]);
  logger.info({ ops: (ops.address() as { port: number }).port }, `${o.name} service started`);
  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    const deadline = setTimeout(() => {
      logger.error({ deadlineMs: SHUTDOWN_DEADLINE_MS }, `${o.name} did not stop within the deadline; exiting`);
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS);
    deadline.unref();
    const failed = await orderedShutdown(
      [
        { name: 'ops server', timeoutMs: SHUTDOWN_TIMEOUTS.opsServer, run: () => closeOpsServer(ops, SHUTDOWN_TIMEOUTS.opsServer) },
        { name: 'application', timeoutMs: SHUTDOWN_TIMEOUTS.application, run: () => app.close() },
        { name: 'telemetry', timeoutMs: SHUTDOWN_TIMEOUTS.telemetry, run: () => stopTelemetry() },
      ],
      logger,
    );
    process.exit(failed.length ? 1 : 0);
  };
  process.once('SIGTERM', () => void shutdown());
  process.once('SIGINT', () => void shutdown());
}
