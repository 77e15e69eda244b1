import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { postgresCheck } from '@keel/database';
import { runBackend } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { projectionCheck, ProjectionRunner } from '@keel/projections';
import { tenantModule } from './app.module';

export async function runTenant(config: KeelConfig, logger: Logger): Promise<void> {
  await runBackend(tenantModule(config, logger), config, logger, {
    name: 'tenant',
    defaultOpsPort: 9101,
    checks: (app) => [
      postgresCheck(app.get(DataSource)),
      { name: 'redis', check: async () => (await app.get(Redis).ping()) === 'PONG' },
      projectionCheck(app.get(ProjectionRunner)),
    ],
  });
}
