import { Controller, Get, Inject, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import Redis from 'ioredis';
import { routes } from '@keel/contracts';
import { MESSAGING, Messaging } from '@keel/messaging';
import { metricsRegistry, readiness } from '@keel/observability';
import { Endpoint } from '../http/endpoint';

const r = routes.operations;

@Controller()
export class OpsController {
  constructor(
    @Inject(MESSAGING) private readonly m: Messaging,
    private readonly redis: Redis,
  ) {}

  @Get('health')
  @Endpoint(r.health)
  health() {
    return { status: 'ok' as const };
  }

  @Get('ready')
  @Endpoint(r.ready)
  async ready(@Res({ passthrough: true }) reply: FastifyReply) {
    const result = await readiness([
      { name: 'nats', check: async () => !this.m.nc.isClosed() && (await this.m.nc.rtt()) >= 0 },
      // Redis down degrades the gateway (rate limits fail open; sign-in counters and Idempotency-Key
      // answers are unavailable) but does not take it out of rotation: it still serves.
      {
        name: 'redis',
        check: async () => {
          const degraded = (why: string) => ({ ok: true, detail: `degraded: ${why}` });
          try {
            return (await this.redis.ping()) === 'PONG' ? true : degraded('unexpected PING answer');
          } catch (error) {
            return degraded((error as Error).message);
          }
        },
      },
    ]);
    void reply.status(result.status);
    return result.body;
  }

  @Get('metrics')
  @Endpoint(r.metrics)
  async metrics(@Res({ passthrough: true }) reply: FastifyReply) {
    void reply.type(metricsRegistry.contentType);
    return metricsRegistry.metrics();
  }
}
