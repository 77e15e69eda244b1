import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { postgresCheck } from '@keel/database';
import { Outbox, outboxCheck } from '@keel/event-sourcing';
import { runBackend } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { projectionCheck, ProjectionRunner } from '@keel/projections';
import { authModule } from './app.module';

export async function runAuth(config: KeelConfig, logger: Logger): Promise<void> {
  await runBackend(authModule(config, logger), config, logger, {
    name: 'auth',
    defaultOpsPort: 9103,
    checks: (app) => [
      postgresCheck(app.get(DataSource)),
      { name: 'redis', check: async () => (await app.get(Redis).ping()) === 'PONG' },
      projectionCheck(app.get(ProjectionRunner)),
      outboxCheck(app.get(Outbox)),
    ],
  });
}
