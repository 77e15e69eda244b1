import 'reflect-metadata';
import { loadConfig } from '@keel/config';
import { createLogger, startTelemetry } from '@keel/observability';

// Telemetry starts before Nest and the instrumented modules are loaded.
const config = loadConfig();
startTelemetry({ serviceName: 'keel-tenant', otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
const logger = createLogger('tenant', config.KEEL_LOG_LEVEL);

async function main(): Promise<void> {
  // Provisioning (role, schema, migrations) is a separate step with the admin URL; the service
  // itself is given only its own role's URL and never changes the schema.
  if (process.argv.includes('--provision-only')) {
    const { provisionTenant } = await import('./database/provision');
    await provisionTenant(config);
    logger.info('tenant schema provisioned');
    return;
  }
  const { runTenant } = await import('./run');
  await runTenant(config, logger);
}

main().catch((err) => {
  logger.fatal({ err }, 'tenant service failed to start');
  process.exit(1);
});
