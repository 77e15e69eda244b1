import 'reflect-metadata';
import { loadConfig } from '@keel/config';
import { createLogger, startTelemetry } from '@keel/observability';

// Telemetry starts before Nest and the instrumented modules are loaded.
const config = loadConfig();
startTelemetry({ serviceName: 'keel-auth', otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
const logger = createLogger('auth', config.KEEL_LOG_LEVEL);

async function main(): Promise<void> {
  // Provisioning (role, schema, migrations) is a separate step with the admin URL; the service
  // itself is given only its own role's URL and never changes the schema.
  if (process.argv.includes('--provision-only')) {
    const { provisionAuth } = await import('./database/provision');
    await provisionAuth(config);
    logger.info('auth schema provisioned');
    return;
  }
  if (!config.KEEL_KEK) {
    throw new Error('KEEL_KEK is not set: set it to 32 random bytes in base64 (openssl rand -base64 32), or start Keel with `npm start`, which makes one.');
  }
  const { runAuth } = await import('./run');
  await runAuth(config, logger);
}

main().catch((err) => {
  logger.fatal({ err }, 'auth service failed to start');
  process.exit(1);
});
