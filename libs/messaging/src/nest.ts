import { DynamicModule, Global, Inject, Injectable, Module, OnApplicationBootstrap, OnApplicationShutdown, SetMetadata } from '@nestjs/common';
import { DiscoveryModule, DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { Subscription } from 'nats';
import { KeelConfig } from '@keel/config';
import { Logger } from '@keel/observability';
import { closeMessaging, connectMessaging, Messaging } from './connection';
import { EventStore } from './event-store';
import { RpcClient, serveRpc } from './rpc';
import { ensureEventStream } from './stream';

export const MESSAGING = Symbol('MESSAGING');
export const KEEL_CONFIG = Symbol('KEEL_CONFIG');
export const KEEL_LOGGER = Symbol('KEEL_LOGGER');
const RPC_HANDLER = 'keel:rpc-handler';

/**
 * Marks a method as the handler of a NATS request subject (without the deployment prefix),
 * e.g. `@RpcHandler('cmd.tenant.create')`. It receives the decoded body and returns the answer.
 */
export const RpcHandler = (subject: string) => SetMetadata(RPC_HANDLER, subject);

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
class RpcExplorer implements OnApplicationBootstrap, OnApplicationShutdown {
  private subscriptions: Subscription[] = [];

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    @Inject(MESSAGING) private readonly m: Messaging,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
    @Inject('KEEL_SERVICE') private readonly service: string,
  ) {}

  onApplicationBootstrap(): void {
    for (const wrapper of this.discovery.getProviders()) {
      const instance = wrapper.instance as Record<string, unknown> | undefined;
      if (!instance || typeof instance !== 'object') continue;
      const proto = Object.getPrototypeOf(instance);
      for (const method of this.scanner.getAllMethodNames(proto)) {
        const subject = this.reflector.get<string>(RPC_HANDLER, proto[method]);
        if (!subject) continue;
        const fn = (instance[method] as (body: unknown) => Promise<unknown>).bind(instance);
        this.subscriptions.push(serveRpc(this.m, subject, this.service, fn, this.logger));
        this.logger.debug({ subject }, 'serving requests');
      }
    }
  }

  onApplicationShutdown(): void {
    for (const s of this.subscriptions) s.unsubscribe();
  }
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
      imports: [DiscoveryModule],
      providers: [
        { provide: KEEL_CONFIG, useValue: options.config },
        { provide: KEEL_LOGGER, useValue: options.logger },
        { provide: 'KEEL_SERVICE', useValue: options.service },
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
        RpcExplorer,
        MessagingLifecycle,
      ],
      exports: [KEEL_CONFIG, KEEL_LOGGER, MESSAGING, EventStore, RpcClient],
    };
  }
}
