import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { EventStore, KEEL_LOGGER, MESSAGING, Messaging } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { LedgerQueries } from './ledger/ledger.queries';
import { LedgerRepository } from './ledger/ledger.repository';
import { LedgerWriter } from './ledger/ledger-writer';
import { SigningKeys } from './signing/signing-keys';

export function auditModule(config: KeelConfig, logger: Logger) {
  return serviceModule({
    name: 'audit',
    config,
    logger,
    providers: [
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
    ],
    // Its @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    controllers: [LedgerQueries],
    start: async (get) => {
      // The verification key is published from the first start, before any checkpoint.
      await get<SigningKeys>(SigningKeys).active();
      get<LedgerWriter>(LedgerWriter).start();
    },
    stop: (get) => get<LedgerWriter>(LedgerWriter).stop(),
    checks: (get) => {
      const writer = get<LedgerWriter>(LedgerWriter);
      return [{ name: 'ledger', check: async () => ({ ok: writer.health().healthy || !writer.health().lastError, detail: writer.health() }) }];
    },
  });
}
