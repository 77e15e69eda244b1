import { Inject, Injectable, Module, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { KeelConfig, serviceDatabaseUrl } from '@keel/config';
import { openDataSource } from '@keel/database';
import { EventStore, KEEL_LOGGER, MESSAGING, Messaging, MessagingModule } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { AUDIT_ROLE, AUDIT_SCHEMA } from './database/schema';
import { LedgerQueries } from './ledger/ledger.queries';
import { LedgerRepository } from './ledger/ledger.repository';
import { LedgerWriter } from './ledger/ledger-writer';
import { SigningKeys } from './signing/signing-keys';

@Injectable()
class LedgerLifecycle implements OnApplicationBootstrap, OnApplicationShutdown {
  constructor(
    private readonly writer: LedgerWriter,
    private readonly keys: SigningKeys,
    @Inject(DataSource) private readonly ds: DataSource,
  ) {}
  async onApplicationBootstrap(): Promise<void> {
    // The verification key is published from the first start, before any checkpoint.
    await this.keys.active();
    this.writer.start();
  }
  async onApplicationShutdown(): Promise<void> {
    await this.writer.stop();
    await this.ds.destroy();
  }
}

export function auditModule(config: KeelConfig, logger: Logger) {
  @Module({
    imports: [MessagingModule.forRoot({ config, logger, service: 'audit' })],
    providers: [
      {
        provide: DataSource,
        useFactory: () =>
          openDataSource({ url: serviceDatabaseUrl(config, AUDIT_ROLE), schema: AUDIT_SCHEMA, applicationName: 'keel-audit' }),
      },
      { provide: LedgerRepository, useFactory: (ds: DataSource) => new LedgerRepository(ds), inject: [DataSource] },
      {
        provide: SigningKeys,
        useFactory: (ds: DataSource) => new SigningKeys(ds, Buffer.from(config.KEEL_KEK!, 'base64')),
        inject: [DataSource],
      },
      {
        provide: LedgerWriter,
        useFactory: (ds: DataSource, repo: LedgerRepository, store: EventStore, m: Messaging, log: Logger, keys: SigningKeys) =>
          new LedgerWriter(ds, repo, store, m, log, keys, {
            every: config.KEEL_CHECKPOINT_EVERY,
            intervalMs: config.KEEL_CHECKPOINT_INTERVAL_MS,
          }),
        inject: [DataSource, LedgerRepository, EventStore, MESSAGING, KEEL_LOGGER, SigningKeys],
      },
      LedgerLifecycle,
    ],
    // Its @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    controllers: [LedgerQueries],
  })
  class AuditModule {}
  return AuditModule;
}
