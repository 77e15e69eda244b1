import { Controller, Get, Inject, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import Redis from 'ioredis';
import { MESSAGING, Messaging } from '@keel/messaging';
import { metricsRegistry, readiness } from '@keel/observability';
import { Endpoint } from '../http/endpoint';

@Controller()
export class OpsController {
  constructor(
    @Inject(MESSAGING) private readonly m: Messaging,
    private readonly redis: Redis,
  ) {}

  @Get('health')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'Liveness' })
  health() {
    return { status: 'ok' };
  }

  @Get('ready')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'Readiness: NATS and Redis reachable' })
  async ready(@Res({ passthrough: true }) reply: FastifyReply) {
    const r = await readiness([
      { name: 'nats', check: async () => !this.m.nc.isClosed() && (await this.m.nc.rtt()) >= 0 },
      { name: 'redis', check: async () => (await this.redis.ping()) === 'PONG' },
    ]);
    void reply.status(r.status);
    return r.body;
  }

  @Get('metrics')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'Prometheus metrics' })
  async metrics(@Res({ passthrough: true }) reply: FastifyReply) {
    void reply.type(metricsRegistry.contentType);
    return metricsRegistry.metrics();
  }
}
