import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { KeelConfig, loadConfig } from '@keel/config';
import { createLogger, Logger, startTelemetry } from '@keel/observability';
import { manifestService } from './manifest';
import type { Migrations } from './provision';

/** What a service's module factory is given. */
export type ModuleFactory = (config: KeelConfig, logger: Logger) => unknown;

export interface ServiceDefinition {
  /** Its name in services.manifest.json, which says its kind, port and whether it has a database. */
  name: string;
  /**
   * A backend's application module (usually made with serviceModule), loaded only once
   * telemetry has started: `() => import('./app.module').then((m) => m.tenantModule)`.
   */
  module?: () => Promise<ModuleFactory>;
  /** A gateway's HTTP application, made but not listening (the kit connects the transport and listens). */
  http?: () => Promise<(config: KeelConfig, logger: Logger) => Promise<INestApplication>>;
  /** Its migrations, for the provisioning step (`--provision-only`), in the order they run. */
  migrations?: () => Promise<Migrations>;
  /** Its Postgres schema; the name (dashes as underscores) when omitted. */
  schema?: string;
  /** Settings the process does not start without, each with the sentence that says how to set it. */
  requires?: { [K in keyof KeelConfig]?: string };
}

/**
 * The whole of a service's main.ts: telemetry first (before Nest or any instrumented module is
 * loaded, which is why the module and migrations come as loaders), the logger, then either the
 * provisioning step (`main.js --provision-only`, with the admin URL: role, schema, migrations)
 * or the service itself (a backend with its ops server, or a gateway), with an ordered and
 * bounded stop on SIGTERM/SIGINT. A failure to start is logged and exits with 1.
 */
export function bootstrapService(def: ServiceDefinition): void {
  const config = loadConfig();
  startTelemetry({ serviceName: `keel-${def.name}`, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  const logger = createLogger(def.name, config.KEEL_LOG_LEVEL);
  run(def, config, logger).catch((err) => {
    logger.fatal({ err }, `${def.name} service failed to start`);
    process.exit(1);
  });
}

async function run(def: ServiceDefinition, config: KeelConfig, logger: Logger): Promise<void> {
  const entry = manifestService(def.name);
  // Provisioning is a separate step with the admin URL; the service itself is given only its
  // own role's URL and never changes the schema.
  if (process.argv.includes('--provision-only')) {
    if (!def.migrations) throw new Error(`${def.name} has no migrations to provision; give bootstrapService its migrations.`);
    const { provisionService } = await import('./provision');
    await provisionService(config, entry, def.schema ?? def.name.replace(/-/g, '_'), await def.migrations());
    logger.info(`${def.name} schema provisioned`);
    return;
  }
  for (const [key, how] of Object.entries(def.requires ?? {})) {
    if (config[key as keyof KeelConfig] === undefined) throw new Error(`${key} is not set: ${how}`);
  }
  const { runBackend, runGateway } = await import('./run');
  if (entry.kind === 'gateway') {
    if (!def.http) throw new Error(`${def.name} is a gateway in services.manifest.json; give bootstrapService its http application.`);
    await runGateway(await (await def.http())(config, logger), entry, config, logger);
    return;
  }
  if (!def.module) throw new Error(`${def.name} is a backend in services.manifest.json; give bootstrapService its module.`);
  await runBackend((await def.module())(config, logger), entry, config, logger);
}
