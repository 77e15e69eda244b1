import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { postgresCheck } from '@keel/database';
import { runBackend } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { auditModule } from './app.module';
import { LedgerWriter } from './ledger/ledger-writer';

export async function runAudit(config: KeelConfig, logger: Logger): Promise<void> {
  await runBackend(auditModule(config, logger), config, logger, {
    name: 'audit',
    defaultOpsPort: 9102,
    checks: (app) => {
      const writer = app.get(LedgerWriter);
      return [
        postgresCheck(app.get(DataSource)),
        { name: 'ledger', check: async () => ({ ok: writer.health().healthy || !writer.health().lastError, detail: writer.health() }) },
      ];
    },
  });
}
