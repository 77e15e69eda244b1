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
      { name: 'redis', check: async () => (await this.redis.ping()) === 'PONG' },
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
