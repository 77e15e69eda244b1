import 'reflect-metadata';
import { loadConfig } from '@keel/config';
import { createLogger, startTelemetry } from '@keel/observability';

// Telemetry starts before Nest, Fastify and the instrumented modules are loaded.
const config = loadConfig();
startTelemetry({ serviceName: 'keel-gateway', otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
const logger = createLogger('gateway', config.KEEL_LOG_LEVEL);

async function main(): Promise<void> {
  if (!config.KEEL_BOOTSTRAP_TOKEN) {
    throw new Error('KEEL_BOOTSTRAP_TOKEN is not set: set it (16+ characters) or start Keel with `npm start`, which makes one.');
  }
  const { runGateway } = await import('./run');
  await runGateway(config, logger);
}

main().catch((err) => {
  logger.fatal({ err }, 'gateway failed to start');
  process.exit(1);
});
