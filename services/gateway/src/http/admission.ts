import { Inject, Injectable } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { KeelConfig } from '@keel/config';
import { ipAllowed, isTenantId, KeelError, permissions as P, PLATFORM_TENANT, stepUpWindowOf, Tenant } from '@keel/contracts';
import { KEEL_CONFIG, KEEL_LOGGER } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { Identity, IdentityVerifier } from '../identity/identity';
import { TenantDirectory } from '../tenants/tenant-directory';
import { EndpointSpec } from './endpoint';
import { RateLimitDecision, RateLimiter, rateLimitHeaders, RateLimiterUnavailableError } from './rate-limiter';
import { KeelRequest, Principal } from './request-context';
import { refuseBadTenantParam, validateRequest } from './validate-request';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** `f(x)` now when `x` is at hand, after it when it is a promise: a step that usually need not wait does not. */
function then<T, R>(x: T | Promise<T>, f: (v: T) => R | Promise<R>): R | Promise<R> {
  return x instanceof Promise ? x.then(f) : f(x);
}

/**
 * Every request, in one place: who the caller is (operator token, access token or API key),
 * whether the route's declared permission is held, whether the tenant in the path is the
 * caller's own (only platform administrators cross tenants), the tenant's rate limit, and
 * the input against the route's declaration. A route without a declaration is refused (fail
 * closed). Used by the guard of every Nest route and by the direct routes (see direct-routes.ts).
 *
 * Synchronous when nothing has to wait, which is the common case: a token verified before (the
 * verifier's cache), a tenant the directory holds, a rate-limit lease with room. Only a step that
 * needs the network returns a promise, so a hot request costs no promise per step.
 */
@Injectable()
export class Admission {
  private readonly bootstrapToken?: Buffer;
  private lastStoreWarning = 0;

  constructor(
    @Inject(KEEL_CONFIG) config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
    private readonly identities: IdentityVerifier,
    private readonly directory: TenantDirectory,
    private readonly limiter: RateLimiter,
  ) {
    if (config.KEEL_BOOTSTRAP_TOKEN) this.bootstrapToken = Buffer.from(config.KEEL_BOOTSTRAP_TOKEN);
  }

  /** Admits the request or throws (or rejects with) the KeelError that answers it; undefined when it is admitted at once. */
  admit(spec: EndpointSpec | undefined, req: KeelRequest, reply: FastifyReply): void | Promise<void> {
    const requestId = req.headers['x-request-id'];
    req.correlationId = typeof requestId === 'string' && REQUEST_ID.test(requestId) ? requestId : randomUUID();
    void reply.header('x-request-id', req.correlationId);
    if (!spec) throw new KeelError('forbidden', 'This route declares no permission and is closed.');
    if (spec.permission === 'public') return this.finish(spec, req);
    return then(this.authenticate(req), (principal): void | Promise<void> => {
      req.principal = principal;
      if (spec.permission !== 'authenticated' && principal.permissions !== '*' && !principal.permissions.has(spec.permission)) {
        throw new KeelError('forbidden', `This needs the permission "${spec.permission}".`);
      }
      refuseBadTenantParam(spec, req);
      const same = spec.tenantParam && !principal.crossTenant ? this.sameTenant(principal, (req.params as Record<string, string>)[spec.tenantParam]) : undefined;
      return then(same, () =>
        then(this.tenantPolicy(principal, req, reply), (tenant) => {
          if (spec.stepUp) this.requireRecentAuthentication(principal, tenant, reply);
          this.finish(spec, req);
        }),
      );
    });
  }

  private finish(spec: EndpointSpec, req: KeelRequest): void {
    // Validation after authentication: an anonymous caller learns nothing about the contract.
    validateRequest(spec, req);
    // Last, as the answer it replaces did: nobody but a platform principal (never an anonymous caller).
    const p = req.principal;
    if (spec.platformOnly && (!p || (!p.crossTenant && p.tenantId !== PLATFORM_TENANT))) {
      throw new KeelError('forbidden', "This route covers the ledger of every tenant: platform principals only. A tenant's trail is GET /api/v1/audit/events.");
    }
  }

  private authenticate(req: KeelRequest): Principal | Promise<Principal> {
    const header = req.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (!match) throw new KeelError('unauthorized', 'Send "Authorization: Bearer <token>".');
    const credential = match[1]!;
    const ip = req.ip;
    const userAgent = typeof req.headers['user-agent'] === 'string' ? { userAgent: req.headers['user-agent'].slice(0, 512) } : {};
    const presented = Buffer.from(credential);
    // Constant time over the token's bytes; only its length can be learnt from timing.
    if (this.bootstrapToken && presented.length === this.bootstrapToken.length && timingSafeEqual(presented, this.bootstrapToken)) {
      return { actor: { kind: 'system', id: 'bootstrap-operator', ip, ...userAgent }, permissions: '*', tenantId: 'platform', crossTenant: true };
    }
    const principal = (identity: Identity): Principal => ({
      actor: { kind: identity.kind, id: identity.id, tenantId: identity.tenantId, ip, ...userAgent },
      permissions: identity.permissions,
      tenantId: identity.tenantId,
      ...(identity.sessionId ? { sessionId: identity.sessionId } : {}),
      ...(identity.authTime !== undefined ? { authTime: identity.authTime } : {}),
      ...(identity.amr ? { amr: identity.amr } : {}),
      crossTenant: identity.permissions.has(P.platformCrossTenant),
    });
    const known = this.identities.cached(credential);
    return known ? principal(known) : this.identities.verify(credential).then(principal);
  }

  /**
   * A route declared `stepUp` needs a person who proved who they are recently: the access token's
   * `auth_time` within the tenant's `stepUpWindowSeconds` (default 600). Otherwise 401
   * `step_up_required` with an RFC 9470 challenge: re-authenticate, then retry with the new token.
   * An API key has no person behind it and never passes; the operator's break-glass token is not
   * a session and is exempt.
   */
  private requireRecentAuthentication(principal: Principal, tenant: Tenant | undefined, reply: FastifyReply): void {
    if (principal.actor.kind === 'system') return;
    if (principal.actor.kind !== 'user') {
      throw new KeelError('forbidden', 'An API key cannot do this: it needs a signed-in user who has recently proved who they are.');
    }
    const window = stepUpWindowOf(tenant?.settings);
    const age = principal.authTime === undefined ? undefined : Math.floor(Date.now() / 1000) - principal.authTime;
    if (age !== undefined && age <= window) return;
    void reply.header('www-authenticate', `Bearer error="insufficient_user_authentication", error_description="A more recent authentication is required", max_age=${window}`);
    throw new KeelError(
      'step_up_required',
      `This needs a recent sign-in (within ${window} s${age === undefined ? '' : `; yours was ${age} s ago`}): re-authenticate with POST /api/v1/auth/reauthenticate (your password, and a code if you have a second factor), then retry with the access token it answers.`,
    );
  }

  /** 404, not 403: a caller learns nothing about other tenants' resources. */
  private sameTenant(principal: Principal, value: string | undefined): void | Promise<void> {
    const check = (tenantId: string | undefined) => {
      if (!tenantId || tenantId !== principal.tenantId) throw new KeelError('not_found', 'No such resource in your tenant.');
    };
    if (!value || isTenantId(value)) return check(value);
    // A slug: the tenant it names.
    const known = this.directory.cached(value);
    if (known) return check(known.id);
    return this.directory.get(value).then((t) => t.id, () => undefined).then(check);
  }

  /**
   * The caller's tenant's own rules: an inactive tenant's credentials stop working; a caller
   * outside the tenant's allowed IP ranges is refused; the plan sets the requests per minute,
   * counted across all gateways in Redis. Platform principals are not bound by a tenant's rules.
   */
  private tenantPolicy(principal: Principal, req: KeelRequest, reply: FastifyReply): Tenant | undefined | Promise<Tenant | undefined> {
    if (principal.tenantId === 'platform') return undefined;
    // Fail closed: without the tenant, its rules (status, networks, limit) cannot be applied.
    const tenant =
      this.directory.cached(principal.tenantId) ??
      this.directory.get(principal.tenantId).catch((error: unknown) => {
        if (error instanceof KeelError && error.code === 'not_found') throw new KeelError('forbidden', 'The tenant of this credential no longer exists.');
        throw error instanceof KeelError ? error : new KeelError('service_unavailable', "The caller's tenant cannot be looked up right now; retry shortly.");
      });
    return then(tenant, (t) => {
      // A suspended or closed tenant's credentials stop working at once, not when they expire.
      if (t.status !== 'active') throw new KeelError('forbidden', `Tenant ${t.slug} is ${t.status}; its users and keys cannot act.`);
      if (!ipAllowed(req.ip, t.settings.allowedIpRanges)) {
        throw new KeelError('forbidden', `Your address ${req.ip} is outside tenant ${t.slug}'s allowed IP ranges.`);
      }
      const limit = t.quotas.requestsPerMinute;
      const decided = (decision: RateLimitDecision): Tenant => {
        void reply.headers(rateLimitHeaders(decision));
        if (!decision.allowed) {
          throw new KeelError('rate_limited', `This tenant's plan allows ${limit} requests per minute; retry in ${decision.retryAfterSeconds ?? 1} s.`);
        }
        return t;
      };
      const now = this.limiter.consumeNow(t.id, limit);
      if (now) return decided(now);
      return this.limiter
        .consume(t.id, limit)
        .catch((err) => {
          // Redis away: serve rather than refuse everyone (the limit protects, it does not bill).
          if (!(err instanceof RateLimiterUnavailableError)) throw err;
          if (Date.now() - this.lastStoreWarning > 10_000) {
            this.lastStoreWarning = Date.now();
            this.logger.warn({ err }, 'rate limit store unavailable; allowing requests');
          }
          return this.limiter.failOpen(limit);
        })
        .then(decided);
    });
  }
}
