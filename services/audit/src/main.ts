import 'reflect-metadata';
import { loadConfig } from '@keel/config';
import { createLogger, startTelemetry } from '@keel/observability';

// Telemetry starts before Nest and the instrumented modules are loaded.
const config = loadConfig();
startTelemetry({ serviceName: 'keel-audit', otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
const logger = createLogger('audit', config.KEEL_LOG_LEVEL);

async function main(): Promise<void> {
  // Provisioning (role, schema, migrations) is a separate step with the admin URL; the service
  // itself is given only its own role's URL and never changes the schema.
  if (process.argv.includes('--provision-only')) {
    const { provisionAudit } = await import('./database/provision');
    await provisionAudit(config);
    logger.info('audit schema provisioned');
    return;
  }
  if (!config.KEEL_KEK) {
    throw new Error('KEEL_KEK is not set: set it to 32 random bytes in base64 (openssl rand -base64 32), or start Keel with `npm start`, which makes one.');
  }
  const { runAudit } = await import('./run');
  await runAudit(config, logger);
}

main().catch((err) => {
  logger.fatal({ err }, 'audit service failed to start');
  process.exit(1);
});
