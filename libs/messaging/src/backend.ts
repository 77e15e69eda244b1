import { NestFactory } from '@nestjs/core';
import { INestMicroservice } from '@nestjs/common';
import { Logger, NestPinoLogger } from '@keel/observability';
import { Messaging } from './connection';
import { KEEL_SERVICE, MESSAGING } from './nest';
import { KeelNatsTransport, KeelRpcExceptionFilter } from './transport';

/**
 * The Nest application of a service with its `@MessagePattern`/`@EventPattern` handlers served
 * by KeelNatsTransport over the service's own connection (MessagingModule's), in the queue group
 * MessagingModule names. Listening starts after the application's bootstrap hooks; closing the
 * application closes the transport first (no new requests, those in flight answered, event
 * consumers stopped), then the providers (pools, the NATS connection) in Nest's order. The
 * service kit (@keel/service-kit) runs it with the ops server and the ordered, bounded stop.
 */
export async function createServiceApp(module: unknown, logger: Logger): Promise<{ app: INestMicroservice; transport: KeelNatsTransport }> {
  let app: INestMicroservice | undefined;
  const transport = new KeelNatsTransport({
    messaging: () => app!.get<Messaging>(MESSAGING),
    service: () => app!.get<string>(KEEL_SERVICE),
    logger,
  });
  app = await NestFactory.createMicroservice<never>(module as never, { strategy: transport, logger: new NestPinoLogger(logger) } as never);
  app.useGlobalFilters(new KeelRpcExceptionFilter());
  await app.listen();
  return { app, transport };
}
