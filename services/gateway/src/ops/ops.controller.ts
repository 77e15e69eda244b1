import { Controller, Get, Inject, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import Redis from 'ioredis';
import { routes } from '@keel/contracts';
import { MESSAGING, Messaging } from '@keel/messaging';
import { metricsRegistry, readiness, withTimeout } from '@keel/observability';
import { Endpoint } from '../http/endpoint';

const r = routes.operations;

/**
 * How long the Redis PING of /ready may take. Well inside the readiness wrapper's bound, so a
 * silent Redis (stopped, a dead link) is "degraded" like a refused one, and does not take every
 * gateway out of rotation.
 */
export const REDIS_PING_TIMEOUT_MS = 1_000;

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
            return (await withTimeout(this.redis.ping(), REDIS_PING_TIMEOUT_MS, 'Redis PING')) === 'PONG' ? true : degraded('unexpected PING answer');
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
