import { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isIPv4, isIPv6 } from 'node:net';
import { ipv6Prefix64, KeelError, RouteDecl } from '@keel/contracts';
import { Logger } from '@keel/observability';
import { routerPath } from './endpoint';
import { sendProblem } from './problem';
import { RateLimiter, rateLimitHeaders, RateLimiterUnavailableError } from './rate-limiter';

/**
 * Public routes that only serve a document or a probe: cheap, polled by load balancers,
 * monitoring and token verifiers, so not limited per address. Every other route without a
 * caller (sign-in, refresh, SSO start and callback, and any public route added later) is.
 */
export const UNLIMITED_PUBLIC_ROUTES: ReadonlySet<string> = new Set([
  'operations.health',
  'operations.ready',
  'operations.metrics',
  'operations.openapi',
  'operations.asyncapi',
  'operations.docs',
  'operations.asset',
  'auth.jwks',
  'auth.discovery',
  'audit.keys',
]);

/** `METHOD path` (as Fastify names a matched route) of every public route that is limited. */
export function limitedPublicRoutes(routes: Iterable<RouteDecl>): Set<string> {
  const limited = new Set<string>();
  for (const r of routes) if (r.permission === 'public' && !UNLIMITED_PUBLIC_ROUTES.has(r.operationId)) limited.add(`${r.method} ${routerPath(r.path)}`);
  return limited;
}

/**
 * Whose quota a request takes: the client's IPv4 address (an IPv4-mapped IPv6 address counts
 * as the IPv4 one), or its IPv6 /64 (one subscriber's network: a host there can use any of
 * 2^64 addresses). Anything else (no address) is counted as itself.
 */
export function clientKey(ip: string | undefined): string {
  if (!ip) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (isIPv4(ip)) return ip;
  if (isIPv6(ip) && !ip.includes('.') && !ip.includes('%')) return `${ipv6Prefix64(ip)}::/64`;
  return ip;
}

/**
 * The per-address limit on unauthenticated routes that do work: KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE
 * requests per minute per client address (`req.ip`: the forwarded client behind a trusted proxy),
 * counted in Redis across gateways with the tenant limiter's sliding window in a key space of its
 * own (`<prefix>public:ratelimit:<address>:`). An `onRequest` hook, so a refused request costs no
 * body parsing, no guard and no call to a service: 429 problem+json with Retry-After and the
 * RateLimit headers. Redis away: the request is served (fail open, as the tenant limit does) and
 * a warning logged at most every 10 s. A limit of 0 turns it off.
 */
export function registerPublicRateLimit(
  fastify: FastifyInstance,
  o: { limiter: RateLimiter; limitPerMinute: number; routes: Iterable<RouteDecl>; logger: Logger },
): void {
  if (o.limitPerMinute <= 0) return;
  const limited = limitedPublicRoutes(o.routes);
  let lastWarning = 0;
  /** True when it answered (429): the request goes no further. */
  const limit = async (req: FastifyRequest, reply: FastifyReply): Promise<boolean> => {
    const key = clientKey(req.ip);
    const decision = await o.limiter.consume(key, o.limitPerMinute).catch((err: unknown) => {
      if (!(err instanceof RateLimiterUnavailableError)) throw err;
      if (Date.now() - lastWarning > 10_000) {
        lastWarning = Date.now();
        o.logger.warn({ err }, 'rate limit store unavailable; allowing public requests');
      }
      return o.limiter.failOpen(o.limitPerMinute);
    });
    void reply.headers(rateLimitHeaders(decision));
    if (!decision.allowed) {
      sendProblem(
        reply,
        new KeelError('rate_limited', `At most ${o.limitPerMinute} requests a minute from one address to this route's kind (sign-in, refresh, SSO); retry in ${decision.retryAfterSeconds ?? 1} s.`),
        req.url,
      );
      return true;
    }
    return false;
  };
  // A callback hook: a route that is not limited (nearly every request) passes on at once, without a promise.
  fastify.addHook('onRequest', (req: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => {
    const url = req.routeOptions.url;
    if (url === undefined || !limited.has(`${req.method} ${url}`)) return done();
    limit(req, reply)
      .then((answered) => {
        // Answered (429): Fastify is told nothing more (a callback hook that replies does not call done).
        if (!answered) done();
      }, done)
      .catch((err: unknown) => o.logger.error({ err }, 'the public rate limit hook failed after answering'));
  });
}
