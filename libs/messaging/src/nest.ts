import { DynamicModule, Global, Inject, Injectable, Module, OnApplicationShutdown } from '@nestjs/common';
import { KeelConfig } from '@keel/config';
import { Logger } from '@keel/observability';
import { closeMessaging, connectMessaging, Messaging } from './connection';
import { EventStore } from './event-store';
import { RpcClient } from './rpc';
import { ensureEventStream } from './stream';
import { KeelNatsClient } from './transport/client';

export const MESSAGING = Symbol('MESSAGING');
export const KEEL_CONFIG = Symbol('KEEL_CONFIG');
export const KEEL_LOGGER = Symbol('KEEL_LOGGER');
/** The service's name: the queue group its request handlers share (see KeelNatsTransport). */
export const KEEL_SERVICE = 'KEEL_SERVICE';

export const InjectMessaging = () => Inject(MESSAGING);
export const InjectConfig = () => Inject(KEEL_CONFIG);
export const InjectLogger = () => Inject(KEEL_LOGGER);

export interface MessagingModuleOptions {
  config: KeelConfig;
  logger: Logger;
  /** Queue group of this service's request handlers (one per service, shared by its replicas). */
  service: string;
}

@Injectable()
class MessagingLifecycle implements OnApplicationShutdown {
  constructor(@Inject(MESSAGING) private readonly m: Messaging) {}
  async onApplicationShutdown(): Promise<void> {
    await closeMessaging(this.m);
  }
}

@Global()
@Module({})
export class MessagingModule {
  static forRoot(options: MessagingModuleOptions): DynamicModule {
    return {
      module: MessagingModule,
      providers: [
        { provide: KEEL_CONFIG, useValue: options.config },
        { provide: KEEL_LOGGER, useValue: options.logger },
        { provide: KEEL_SERVICE, useValue: options.service },
        {
          provide: MESSAGING,
          useFactory: async () => {
            const m = await connectMessaging(options.config, `keel-${options.service}`);
            await ensureEventStream(m.jsm, {
              stream: options.config.KEEL_STREAM,
              prefix: options.config.KEEL_SUBJECT_PREFIX,
              replicas: options.config.KEEL_STREAM_REPLICAS,
            });
            return m;
          },
        },
        { provide: EventStore, useFactory: (m: Messaging) => new EventStore(m), inject: [MESSAGING] },
        { provide: RpcClient, useFactory: (m: Messaging) => new RpcClient(m), inject: [MESSAGING] },
        { provide: KeelNatsClient, useFactory: (m: Messaging) => new KeelNatsClient({ messaging: m }), inject: [MESSAGING] },
        MessagingLifecycle,
      ],
      exports: [KEEL_CONFIG, KEEL_LOGGER, KEEL_SERVICE, MESSAGING, EventStore, RpcClient, KeelNatsClient],
    };
  }
}
