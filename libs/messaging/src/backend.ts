import { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { KeelConfig } from '@keel/config';
import { initMetrics, Logger, NestPinoLogger, ReadinessCheck, startOpsServer, stopTelemetry } from '@keel/observability';
import { Messaging } from './connection';
import { MESSAGING } from './nest';

export interface BackendOptions {
  name: string;
  /** The ops port (/health, /ready, /metrics) when KEEL_OPS_PORT is not set. */
  defaultOpsPort: number;
  /** Readiness checks beyond NATS, given the running application. */
  checks(app: INestApplicationContext): ReadinessCheck[];
}

/**
 * Runs a backend service (no public HTTP API): the Nest application context, its ops server,
 * and a clean stop on SIGTERM/SIGINT.
 */
export async function runBackend(module: unknown, config: KeelConfig, logger: Logger, o: BackendOptions): Promise<void> {
  initMetrics(o.name);
  const app = await NestFactory.createApplicationContext(module as never, { logger: new NestPinoLogger(logger) });
  const m = app.get<Messaging>(MESSAGING);
  const ops = await startOpsServer(config.KEEL_HTTP_HOST, config.KEEL_OPS_PORT ?? o.defaultOpsPort, [
    { name: 'nats', check: async () => !m.nc.isClosed() && (await m.nc.rtt()) >= 0 },
    ...o.checks(app),
  ]);
  logger.info({ ops: (ops.address() as { port: number }).port }, `${o.name} service started`);
  const shutdown = async () => {
    ops.close();
    await app.close();
    await stopTelemetry();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown());
  process.once('SIGINT', () => void shutdown());
}
