import { CallHandler, ExecutionContext, Inject, Injectable, NestInterceptor } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { FastifyReply } from 'fastify';
import Redis from 'ioredis';
import { createHash } from 'node:crypto';
import { from, lastValueFrom, Observable } from 'rxjs';
import { KeelConfig } from '@keel/config';
import { KeelError } from '@keel/contracts';
import { KEEL_CONFIG } from '@keel/messaging';
import { ENDPOINT, EndpointSpec } from './endpoint';
import { problem, toKeelError, validationError } from './problem';
import { KeelRequest } from './request-context';
import { ReplayedResponse } from './replayed-response';

const TTL_SECONDS = 24 * 3_600;
const KEY = /^[\x21-\x7e]{1,255}$/;

interface Stored {
  state: 'pending' | 'done';
  fingerprint: string;
  status?: number;
  body?: unknown;
  problem?: boolean;
}

/**
 * `Idempotency-Key` on a POST: the first request's outcome (success or client error) is
 * kept for 24 hours and returned to every retry, which writes nothing new. The same key
 * with a different request is 422; a retry while the first is still running is 409.
 * Keys are scoped to the caller and the route.
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  constructor(
    private readonly reflector: Reflector,
    private readonly redis: Redis,
    @Inject(KEEL_CONFIG) private readonly config: KeelConfig,
  ) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const spec = this.reflector.get<EndpointSpec | undefined>(ENDPOINT, context.getHandler());
    const req = context.switchToHttp().getRequest<KeelRequest>();
    const key = req.headers['idempotency-key'];
    if (!spec?.idempotent || key === undefined) return next.handle();
    if (typeof key !== 'string' || !KEY.test(key)) {
      throw validationError([{ in: 'header', field: 'Idempotency-Key', message: '1 to 255 visible ASCII characters' }]);
    }
    const reply = context.switchToHttp().getResponse<FastifyReply>();
    return from(this.once(req, reply, key, () => lastValueFrom(next.handle())));
  }

  private async once(req: KeelRequest, reply: FastifyReply, key: string, run: () => Promise<unknown>): Promise<unknown> {
    const scope = `${req.principal?.actor.id ?? 'anonymous'}\n${req.method}\n${req.routeOptions.url}\n${key}`;
    const redisKey = `${this.config.KEEL_REDIS_PREFIX}idem:${createHash('sha256').update(scope).digest('hex')}`;
    const fingerprint = createHash('sha256').update(`${req.url}\n${JSON.stringify(req.body ?? null)}`).digest('hex');
    let claimed: string | null;
    try {
      claimed = await this.redis.set(redisKey, JSON.stringify({ state: 'pending', fingerprint } satisfies Stored), 'EX', TTL_SECONDS, 'NX');
    } catch {
      throw new KeelError('service_unavailable', 'Idempotency-Key cannot be honoured right now (its store is unavailable); retry shortly.');
    }
    if (!claimed) {
      const stored = JSON.parse((await this.redis.get(redisKey)) ?? 'null') as Stored | null;
      if (!stored) throw new KeelError('idempotency_in_progress', 'A request with this Idempotency-Key just finished; retry.');
      if (stored.fingerprint !== fingerprint) {
        throw new KeelError('idempotency_key_reused', 'This Idempotency-Key was used for a different request; use a new key.');
      }
      if (stored.state === 'pending') {
        throw new KeelError('idempotency_in_progress', 'A request with this Idempotency-Key is still in progress; retry shortly.');
      }
      reply.header('idempotent-replayed', 'true');
      throw new ReplayedResponse(stored.status!, stored.body, stored.problem ?? false);
    }
    try {
      const body = await run();
      await this.save(redisKey, { state: 'done', fingerprint, status: reply.statusCode, body });
      return body;
    } catch (error) {
      const ke = toKeelError(error);
      if (ke && ke.status < 500 && ke.code !== 'concurrent_modification') {
        await this.save(redisKey, { state: 'done', fingerprint, status: ke.status, body: problem(ke, req.url), problem: true });
      } else {
        await this.redis.del(redisKey).catch(() => undefined);
      }
      throw error;
    }
  }

  private async save(key: string, value: Stored): Promise<void> {
    await this.redis.set(key, JSON.stringify(value), 'EX', TTL_SECONDS).catch(() => undefined);
  }
}
