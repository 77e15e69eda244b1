import { CallHandler, ExecutionContext, Inject, Injectable, NestInterceptor } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { FastifyReply } from 'fastify';
import Redis from 'ioredis';
import { createHash } from 'node:crypto';
import { from, lastValueFrom, Observable } from 'rxjs';
import { KeelConfig } from '@keel/config';
import { KeelError, nameBasedUuid } from '@keel/contracts';
import { KEEL_CONFIG } from '@keel/messaging';
import { ENDPOINT, EndpointSpec } from './endpoint';
import { problem, toKeelError, validationError } from './problem';
import { KeelRequest } from './request-context';
import { ReplayedResponse } from './replayed-response';

/** How long a finished answer (2xx, 4xx) is replayed. */
export const DONE_TTL_SECONDS = 24 * 3_600;
/** A pending marker outlives the request timeout by this much at most (a crashed gateway's marker goes with it). */
export const PENDING_MARGIN_MS = 1_000;
/** A Redis call that takes longer is treated as Redis being unavailable. */
const STORE_TIMEOUT_MS = 1_000;
const KEY = /^[\x21-\x7e]{1,255}$/;

interface Stored {
  state: 'pending' | 'done';
  fingerprint: string;
  status?: number;
  body?: unknown;
  problem?: boolean;
  /** The first answer's headers that belong to it (Location, ETag): a replay is the same answer. */
  headers?: Record<string, string>;
}

const REPLAYED_HEADERS = ['location', 'etag'] as const;

function answerHeaders(reply: FastifyReply): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const name of REPLAYED_HEADERS) {
    const value = reply.getHeader(name);
    if (value !== undefined) out[name] = String(value);
  }
  return Object.keys(out).length ? out : undefined;
}

/**
 * The command id of an `Idempotency-Key` in its scope (tenant, caller, method, route, key): a
 * UUID (version 8) from SHA-256, the same in every gateway replica and after any restart.
 */
export function commandIdFor(scope: string): string {
  return nameBasedUuid(`keel.command\n${scope}`);
}

/** Redis did not answer (down, restarting, silent): the answer cache is skipped, never the request. */
class StoreUnavailable extends Error {}

/**
 * `Idempotency-Key` on a POST. The key, scoped to the tenant, the caller and the route, becomes
 * the command's id (`meta.commandId`): the service applies a command id at most once and answers
 * a retry with the first outcome from its log, whatever happened in between (a timeout, a 5xx, a
 * gateway crash). Redis only caches answers on top of that:
 *
 * - the first request's outcome (success or client error) is kept 24 hours and returned to every
 *   retry without asking the service; the same key with a different request is 422;
 * - while the first request runs, a retry is 409; that pending marker expires within the request
 *   timeout (plus PENDING_MARGIN_MS), so a gateway that died mid-request blocks nobody for long;
 * - a 5xx releases the marker, and the retry asks the service again with the same command id;
 * - with Redis unavailable the request goes through uncached (the command id still holds).
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  private readonly pendingTtlMs: number;

  constructor(
    private readonly reflector: Reflector,
    private readonly redis: Redis,
    @Inject(KEEL_CONFIG) private readonly config: KeelConfig,
  ) {
    this.pendingTtlMs = config.KEEL_REQUEST_TIMEOUT_MS + PENDING_MARGIN_MS;
  }

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const spec = this.reflector.get<EndpointSpec | undefined>(ENDPOINT, context.getHandler());
    const req = context.switchToHttp().getRequest<KeelRequest>();
    const key = req.headers['idempotency-key'];
    if (!spec?.idempotent || key === undefined) return next.handle();
    if (typeof key !== 'string' || !KEY.test(key)) {
      throw validationError([{ in: 'header', field: 'Idempotency-Key', message: '1 to 255 visible ASCII characters' }]);
    }
    const reply = context.switchToHttp().getResponse<FastifyReply>();
    const p = req.principal;
    const scope = `${p?.tenantId ?? '-'}\n${p?.actor.id ?? 'anonymous'}\n${req.method}\n${req.routeOptions.url}\n${key}`;
    req.commandId = commandIdFor(scope);
    return from(this.once(req, reply, scope, () => lastValueFrom(next.handle())));
  }

  private async once(req: KeelRequest, reply: FastifyReply, scope: string, run: () => Promise<unknown>): Promise<unknown> {
    const redisKey = `${this.config.KEEL_REDIS_PREFIX}idem:${createHash('sha256').update(scope).digest('hex')}`;
    const fingerprint = createHash('sha256').update(`${req.url}\n${JSON.stringify(req.body ?? null)}`).digest('hex');
    const claimed = await this.claim(redisKey, fingerprint, reply);
    try {
      const body = await run();
      // Cached even when the claim could not be made: the answer is the same for every retry.
      await this.save(redisKey, { state: 'done', fingerprint, status: reply.statusCode, body, headers: answerHeaders(reply) });
      return body;
    } catch (error) {
      const ke = toKeelError(error);
      if (ke && ke.status < 500 && ke.code !== 'concurrent_modification') {
        await this.save(redisKey, { state: 'done', fingerprint, status: ke.status, body: problem(ke, req.url), problem: true });
      } else if (claimed) {
        // A 5xx (or a conflict worth retrying): the retry asks the service again, with the same command id.
        await this.store(() => this.redis.del(redisKey)).catch(() => undefined);
      }
      throw error;
    }
  }

  /**
   * Marks the key pending, or answers what it holds: the first answer (replayed), 422 for another
   * request, 409 while the first runs. False when Redis is unavailable (the request goes on).
   */
  private async claim(redisKey: string, fingerprint: string, reply: FastifyReply): Promise<boolean> {
    const pending = JSON.stringify({ state: 'pending', fingerprint } satisfies Stored);
    try {
      // Twice at most: the key may expire or be released between the SET and the GET.
      for (let attempt = 1; attempt <= 2; attempt++) {
        if (await this.store(() => this.redis.set(redisKey, pending, 'PX', this.pendingTtlMs, 'NX'))) return true;
        const raw = await this.store(() => this.redis.get(redisKey));
        if (raw === null) continue;
        const stored = JSON.parse(raw) as Stored;
        if (stored.fingerprint !== fingerprint) {
          throw new KeelError('idempotency_key_reused', 'This Idempotency-Key was used for a different request; use a new key.');
        }
        if (stored.state === 'pending') {
          void reply.header('retry-after', String(Math.ceil(this.pendingTtlMs / 1000)));
          throw new KeelError('idempotency_in_progress', 'A request with this Idempotency-Key is still in progress; retry shortly.');
        }
        void reply.header('idempotent-replayed', 'true');
        for (const [name, value] of Object.entries(stored.headers ?? {})) void reply.header(name, value);
        throw new ReplayedResponse(stored.status!, stored.body, stored.problem ?? false);
      }
      throw new KeelError('idempotency_in_progress', 'A request with this Idempotency-Key just finished; retry.');
    } catch (error) {
      if (error instanceof StoreUnavailable) return false;
      throw error;
    }
  }

  private async save(key: string, value: Stored): Promise<void> {
    await this.store(() => this.redis.set(key, JSON.stringify(value), 'EX', DONE_TTL_SECONDS)).catch(() => undefined);
  }

  /** One Redis call, bounded: any failure or silence is StoreUnavailable. */
  private async store<T>(call: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        call(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new StoreUnavailable(`Redis did not answer within ${STORE_TIMEOUT_MS} ms`)), STORE_TIMEOUT_MS);
        }),
      ]);
    } catch (error) {
      throw error instanceof StoreUnavailable ? error : new StoreUnavailable((error as Error)?.message ?? String(error));
    } finally {
      clearTimeout(timer);
    }
  }
}
