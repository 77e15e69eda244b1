import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { createLocalJWKSet, errors as joseErrors, JSONWebKeySet, jwtVerify } from 'jose';
import { Subscription } from 'nats';
import {
  ACCESS_TOKEN_SECONDS,
  authEventTypes as A,
  CurrentAccess,
  EventEnvelope,
  KeelError,
  revokedSessionKey,
  permissionsOf,
  roleChangedKey,
  TOKEN_AUDIENCE,
  TOKEN_ISSUER,
  userChangedKey,
  VerifiedApiKey,
} from '@keel/contracts';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { withTimeout } from '@keel/observability';
import { decodeJson, eventsOf, KEEL_CONFIG, MESSAGING, Messaging, RpcClient } from '@keel/messaging';

export interface Identity {
  kind: 'user' | 'api_key';
  id: string;
  tenantId: string;
  sessionId?: string;
  roles: string[];
  permissions: ReadonlySet<string>;
  /** Seconds since epoch after which this identity must be checked again. */
  expiresAt: number;
  /** A user's access token: when the person last proved who they are (seconds since epoch) and how (RFC 8176); absent for API keys and older tokens. */
  authTime?: number;
  amr?: string[];
  /** A user's access token: when it was issued (seconds since epoch). */
  issuedAt?: number;
  /** An API key: who made it (it acts with at most their current permissions). */
  createdBy?: string;
}


const API_KEY_CACHE_MS = 30_000;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MAX_CACHE = 20_000;
/**
 * How long a revoked API key is refused here on its own. The auth service refuses a revoked key
 * itself; this covers a verification that was in flight, or answered from a read model that had
 * not yet applied the revocation, when the revocation was heard. Far longer than both.
 */
const REVOKED_KEY_MEMORY_MS = 10 * 60_000;
/** How long a change of a user's or role's access is remembered: as long as a token issued before it can be presented. */
const CHANGE_MEMORY_MS = (ACCESS_TOKEN_SECONDS + 60) * 1000;
/** A Redis that is connected but silent counts as away after this. */
const REDIS_CHECK_TIMEOUT_MS = 500;

/** Size limits of the verifier's caches and revocation sets; a field so that tests can make them small. */
export interface IdentityLimits {
  /** Verified access tokens, and verified API keys, kept each. */
  maxCache: number;
  /** Session revocations, API key revocations, and access changes (of users and roles), remembered each. */
  maxRevocations: number;
  revokedKeyMemoryMs: number;
}

/**
 * Who a bearer credential is. Access tokens (JWT, EdDSA) are verified locally against the
 * auth service's JWKS, and a verified token is cached until it expires, so a repeated token
 * costs no signature check. API keys are checked with the auth service and cached briefly.
 * Revocations are pushed, not polled: every session or API key revocation is an event that
 * each gateway hears on NATS and applies at once.
 *
 * Access changes are pushed the same way (Keycloak's "not before", per user and per role): when
 * a user's roles or tenant-scope grants change, or the user is disabled, or a custom
 * role's permissions change or it is deleted, the gateway remembers when, and refuses the
 * user's (or the role's holders') access tokens issued before with 401 invalid_token "Your roles
 * changed; refresh your token"; the refresh reads the roles from the log. The auth service also
 * writes each change to Redis, for a gateway that did not hear it. Cached API keys of an affected
 * creator are dropped at once, and verified afresh: a key acts with its permissions that its
 * creator still holds.
 *
 * Everything here is bounded. A revocation only needs remembering while what it guards can
 * still be presented: a session's until its last access token expires, an API key's until
 * the auth service's own refusal is certain (`REVOKED_KEY_MEMORY_MS`). Expired revocations go
 * first; when more than `maxRevocations` are still current, the oldest go, and the verifier
 * remembers until when they mattered: till then, a token that could belong to a forgotten
 * session is checked in Redis and refused (503) if Redis cannot say, instead of passing, and
 * API keys are verified with the auth service on every request instead of from the cache.
 */
@Injectable()
export class IdentityVerifier implements OnModuleInit, OnModuleDestroy {
  private jwks?: ReturnType<typeof createLocalJWKSet>;
  private jwksFetchedAt = 0;
  private readonly tokens = new Map<string, Identity>();
  private readonly apiKeys = new Map<string, { identity: Identity; at: number }>();
  /**
   * Access changes: `u:<userId>` (roles, a tenant-scope grant, disabled) or
   * `r:<tenantId>:<role>` (a custom role's permissions changed, or it was deleted) → until when it is
   * remembered (the change's time + CHANGE_MEMORY_MS). Tokens issued before the change are refused.
   */
  private readonly changes = new Map<string, number>();
  private changesForgottenUntil = 0;
  /** Counts the changes heard: a verification during which one was heard is not cached. */
  private changesHeard = 0;
  /** Revoked session id → until when a token of it could still be valid (ms since epoch). */
  private readonly revokedSessions = new Map<string, number>();
  /** Revoked API key id → until when it is remembered here (ms since epoch). */
  private readonly revokedKeys = new Map<string, number>();
  /** The latest `until` among session revocations evicted before it passed; 0 when none. */
  private sessionsForgottenUntil = 0;
  private keysForgottenUntil = 0;
  private sub?: Subscription;
  readonly limits: IdentityLimits = { maxCache: MAX_CACHE, maxRevocations: 100_000, revokedKeyMemoryMs: REVOKED_KEY_MEMORY_MS };

  constructor(
    @Inject(MESSAGING) private readonly m: Messaging,
    private readonly rpc: RpcClient,
    private readonly redis: Redis,
    @Inject(KEEL_CONFIG) private readonly config: KeelConfig,
  ) {}

  onModuleInit(): void {
    this.sub = this.m.nc.subscribe(`${this.m.prefix}evt.*.auth.>`, {
      callback: (err, msg) => {
        if (err) return;
        try {
          // One envelope, or a decision of several events (a JSON array of envelopes): each is heard.
          for (const e of eventsOf(decodeJson<unknown>(msg.data))) this.onEvent(e);
        } catch {
          this.tokens.clear();
          this.apiKeys.clear();
        }
      },
    });
    void (async () => {
      for await (const s of this.m.nc.status()) {
        // Revocations may have been missed while disconnected: verify everything afresh.
        if (s.type === 'reconnect') {
          this.tokens.clear();
          this.apiKeys.clear();
        }
      }
    })().catch(() => undefined);
  }

  onModuleDestroy(): void {
    this.sub?.unsubscribe();
  }

  private onEvent(e: EventEnvelope): void {
    if (e.type === A.sessionRevoked) {
      this.revokeSession(e.aggregateId, Date.now() + (ACCESS_TOKEN_SECONDS + 60) * 1000);
      for (const [token, id] of this.tokens) if (id.sessionId === e.aggregateId) this.tokens.delete(token);
    } else if (e.type === A.apiKeyRevoked) {
      const forgotten = remember(this.revokedKeys, e.aggregateId, Date.now() + this.limits.revokedKeyMemoryMs, this.limits.maxRevocations);
      if (forgotten) {
        // The cache may hold a key whose revocation was just forgotten: verify every key afresh.
        this.keysForgottenUntil = Math.max(this.keysForgottenUntil, forgotten);
        this.apiKeys.clear();
      }
      for (const [secret, entry] of this.apiKeys) if (entry.identity.id === e.aggregateId) this.apiKeys.delete(secret);
      this.changesHeard++;
    } else if (e.type === A.apiKeyRotated) {
      // The old secret may end now: verify it afresh (during a grace period the auth service still accepts it).
      for (const [secret, entry] of this.apiKeys) if (entry.identity.id === e.aggregateId) this.apiKeys.delete(secret);
      this.changesHeard++;
    } else if (e.type === A.signingKeyRotated) {
      this.jwks = undefined;
    } else if (e.type === A.userRolesChanged || e.type === A.userDisabled || e.type === A.userErased) {
      this.userChanged(e.aggregateId, changedAt(e));
    } else if (e.type === A.roleGranted || e.type === A.roleRevoked) {
      // Tokens and keys carry tenant-scope roles only; a grant of an older event names no user.
      const data = e.data as { userId?: string; teamId?: string };
      if (data.userId && !data.teamId) this.userChanged(data.userId, changedAt(e));
    } else if (e.type === A.roleUpdated || e.type === A.roleDeleted) {
      this.roleChanged(e.tenantId, e.aggregateId, changedAt(e));
    }
  }

  /** A user's access changed at `at`: their tokens issued before are refused, their keys verified afresh. */
  private userChanged(userId: string, at: number): void {
    this.rememberChange(`u:${userId}`, at);
    for (const [token, id] of this.tokens) if (id.id === userId) this.tokens.delete(token);
    for (const [secret, entry] of this.apiKeys) if (entry.identity.createdBy === userId) this.apiKeys.delete(secret);
  }

  /** A custom role changed at `at`: tokens carrying it issued before are refused; every key is verified afresh (its creator may hold the role). */
  private roleChanged(tenantId: string, role: string, at: number): void {
    this.rememberChange(`r:${tenantId}:${role}`, at);
    for (const [token, id] of this.tokens) if (id.tenantId === tenantId && id.roles.includes(role)) this.tokens.delete(token);
    this.apiKeys.clear();
  }

  private rememberChange(key: string, at: number): void {
    this.changesHeard++;
    const forgotten = remember(this.changes, key, at + CHANGE_MEMORY_MS, this.limits.maxRevocations);
    if (forgotten) {
      // A cached token may be under the change just forgotten: verify every token afresh (Redis knows the change).
      this.changesForgottenUntil = Math.max(this.changesForgottenUntil, forgotten);
      this.tokens.clear();
    }
  }

  /** When `key` last changed (ms since epoch) as this gateway heard it; 0 when it has not (or forgot). */
  private changeOf(key: string): number {
    return isCurrent(this.changes, key) ? this.changes.get(key)! - CHANGE_MEMORY_MS : 0;
  }

  /**
   * The identity of an access token verified before, at once: what `verify` would answer from its
   * cache (a cached token is one no revocation or access change heard since guards). Undefined when
   * the credential has to be verified (`verify`): an API key, a token not cached or expired, or one
   * of a session revoked since.
   */
  cached(credential: string): Identity | undefined {
    const hit = this.tokens.get(credential);
    if (!hit || hit.expiresAt * 1000 <= Date.now()) return undefined;
    if (hit.sessionId && this.isRevoked(hit.sessionId)) return undefined;
    return hit;
  }

  async verify(credential: string): Promise<Identity> {
    if (!credential.startsWith('keel_') && !JWT_SHAPE.test(credential)) {
      throw new KeelError('unauthorized', 'The bearer token is not valid.');
    }
    const identity = credential.startsWith('keel_') ? await this.apiKey(credential) : await this.accessToken(credential);
    if (identity.sessionId && this.isRevoked(identity.sessionId)) throw new KeelError('invalid_token', 'This session has been revoked; sign in again.');
    if (identity.kind === 'api_key' && isCurrent(this.revokedKeys, identity.id)) throw new KeelError('invalid_token', 'This API key has been revoked.');
    return identity;
  }

  /** How many entries each cache and set holds (for tests and metrics). */
  get size(): { tokens: number; apiKeys: number; revokedSessions: number; revokedKeys: number; changes: number } {
    return { tokens: this.tokens.size, apiKeys: this.apiKeys.size, revokedSessions: this.revokedSessions.size, revokedKeys: this.revokedKeys.size, changes: this.changes.size };
  }

  private isRevoked(sessionId: string): boolean {
    return isCurrent(this.revokedSessions, sessionId);
  }

  private revokeSession(sessionId: string, until: number): void {
    const forgotten = remember(this.revokedSessions, sessionId, until, this.limits.maxRevocations);
    if (forgotten) {
      // The cache may hold a token of a session whose revocation was just forgotten: verify afresh.
      this.sessionsForgottenUntil = Math.max(this.sessionsForgottenUntil, forgotten);
      this.tokens.clear();
    }
  }

  private async keySet(refresh = false) {
    // An unknown key id refetches the set, at most once a second.
    if (!this.jwks || (refresh && Date.now() - this.jwksFetchedAt > 1_000)) {
      const set = await this.rpc.request<JSONWebKeySet>('qry.auth.jwks', {});
      this.jwks = createLocalJWKSet(set);
      this.jwksFetchedAt = Date.now();
    }
    return this.jwks;
  }

  private async accessToken(token: string): Promise<Identity> {
    const cached = this.tokens.get(token);
    if (cached && cached.expiresAt * 1000 > Date.now()) return cached;
    const heard = this.changesHeard;
    let payload;
    try {
      const options = { issuer: TOKEN_ISSUER, audience: TOKEN_AUDIENCE, algorithms: ['EdDSA'] };
      try {
        ({ payload } = await jwtVerify(token, await this.keySet(), options));
      } catch (error) {
        if (!(error instanceof joseErrors.JWKSNoMatchingKey)) throw error;
        ({ payload } = await jwtVerify(token, await this.keySet(true), options));
      }
    } catch (error) {
      if (error instanceof KeelError) throw error;
      throw new KeelError('invalid_token', `The access token is not valid (${(error as Error).message}).`);
    }
    const roles = Array.isArray(payload.roles) ? (payload.roles as string[]).filter((r): r is string => typeof r === 'string') : [];
    const userId = String(payload.sub);
    const tenantId = String(payload.tid);
    // A revocation, or an access change, this gateway did not hear (it was away, or started later)
    // is in Redis: one round trip asks for the session's revocation and the changes of the user
    // and of each of the token's roles.
    // Redis away: the pushed revocations and changes still apply; a gateway that missed one while Redis is also away would not know.
    // Unless this gateway has had to forget revocations or changes this token could be under: then Redis
    // must answer, and a token it cannot clear is refused for now (503), not let through.
    const prefix = this.config.KEEL_REDIS_PREFIX;
    const keys = [revokedSessionKey(prefix, String(payload.sid)), userChangedKey(prefix, userId), ...roles.map((r) => roleChangedKey(prefix, tenantId, r))];
    const answers = await withTimeout(this.redis.mget(...keys), REDIS_CHECK_TIMEOUT_MS, 'the revocation check').catch((): (string | null)[] => {
      const underForgotten = (until: number) => payload.exp! * 1000 <= until && Date.now() < until;
      if (underForgotten(this.sessionsForgottenUntil) || underForgotten(this.changesForgottenUntil)) {
        throw new KeelError('service_unavailable', 'Sessions cannot be checked for revocation right now; retry shortly.');
      }
      return [];
    });
    if (answers[0]) {
      this.revokeSession(String(payload.sid), payload.exp! * 1000);
      throw new KeelError('invalid_token', 'This session has been revoked; sign in again.');
    }
    // `perms` carries custom roles' permissions; tokens without it hold their system roles'.
    const perms = Array.isArray(payload.perms) ? new Set(payload.perms as string[]) : permissionsOf(roles);
    const identity: Identity = {
      kind: 'user',
      id: userId,
      tenantId,
      sessionId: String(payload.sid),
      roles,
      permissions: perms,
      expiresAt: payload.exp!,
      ...(typeof payload.iat === 'number' ? { issuedAt: payload.iat } : {}),
      ...(typeof payload.auth_time === 'number' ? { authTime: payload.auth_time } : {}),
      ...(Array.isArray(payload.amr) ? { amr: (payload.amr as unknown[]).filter((v): v is string => typeof v === 'string') } : {}),
    };
    // The latest change of the user or of one of its roles, heard here (read after the round trip, so one heard meanwhile counts) or in Redis.
    const changed = Math.max(
      this.changeOf(`u:${userId}`),
      ...roles.map((r) => this.changeOf(`r:${tenantId}:${r}`)),
      ...answers.slice(1).map((v) => (v && Number.isFinite(Number(v)) ? Number(v) : 0)),
    );
    if (changed) await this.requireIssuedAfter(identity, changed);
    // A revoked session's token is never cached: the cache must hold only what the sets need not guard.
    // Nor one verified while a change was heard: it may have been checked against the state before.
    if (!this.isRevoked(identity.sessionId!) && this.changesHeard === heard) this.remember(this.tokens, token, identity);
    return identity;
  }

  /**
   * Refuses a token issued before its user's access last changed (at `changedAt`, ms). `iat` is in
   * whole seconds: a token of an earlier second is refused, one of a later second passes, and one of
   * the very second of the change is compared with what the user holds now (one question to the
   * auth service): it passes only if the user is active and holds every permission it carries.
   */
  private async requireIssuedAfter(identity: Identity, changedAt: number): Promise<void> {
    const refresh = () => new KeelError('invalid_token', 'Your roles changed; refresh your token.');
    const from = (identity.issuedAt ?? 0) * 1000;
    if (changedAt < from) return;
    if (changedAt >= from + 1000) throw refresh();
    const now = await this.rpc.request<CurrentAccess>('qry.auth.current_access', { tenantId: identity.tenantId, userId: identity.id });
    if (!now.active) throw new KeelError('invalid_token', 'This account is disabled; sign in again.');
    const held = new Set(now.permissions);
    for (const p of identity.permissions) if (!held.has(p)) throw refresh();
  }

  private async apiKey(secret: string): Promise<Identity> {
    const hit = this.apiKeys.get(secret);
    if (hit && Date.now() - hit.at < API_KEY_CACHE_MS && hit.identity.expiresAt * 1000 > Date.now()) return hit.identity;
    const heard = this.changesHeard;
    // The auth service answers what the key may do now: its permissions that its creator still holds.
    const info = await this.rpc.request<VerifiedApiKey>('qry.auth.verify_api_key', { secret });
    const identity: Identity = {
      kind: 'api_key',
      id: info.id,
      tenantId: info.tenantId,
      roles: [],
      permissions: new Set(info.effectivePermissions),
      // Until this secret ends: the key's expiry, or the end of a rotated secret's grace period.
      expiresAt: Math.floor(new Date(info.validUntil).getTime() / 1000),
      createdBy: info.createdBy,
    };
    // While forgotten revocations could matter, every use asks the auth service, which refuses a revoked key itself.
    // A change heard during the verification (the creator's, a role's, a rotation) may not be in its answer: not cached.
    if (Date.now() >= this.keysForgottenUntil && !isCurrent(this.revokedKeys, identity.id) && this.changesHeard === heard) {
      this.remember(this.apiKeys, secret, { identity, at: Date.now() });
    }
    return identity;
  }

  private remember<V>(map: Map<string, V>, key: string, value: V): void {
    map.delete(key);
    map.set(key, value);
    while (map.size > this.limits.maxCache) map.delete(map.keys().next().value!);
  }
}

/** When a change took effect: its time on the log, or when it was heard here if later (a token issued meanwhile may predate it). */
function changedAt(e: EventEnvelope): number {
  const at = Date.parse(e.occurredAt);
  return Math.max(Number.isFinite(at) ? at : 0, Date.now());
}

/** True while `key` is in `set` and its time has not passed (a passed one is dropped). */
function isCurrent(set: Map<string, number>, key: string): boolean {
  const until = set.get(key);
  if (until === undefined) return false;
  if (until <= Date.now()) {
    set.delete(key);
    return false;
  }
  return true;
}

/**
 * Remembers `key` until `until` in a set of at most `max`: when full, the passed entries go
 * first, then the oldest current ones. Answers the latest `until` of a current entry it had to
 * evict (0 when none), which the caller must treat as "may have forgotten a revocation till then".
 */
function remember(set: Map<string, number>, key: string, until: number, max: number): number {
  const previous = set.get(key) ?? 0;
  set.delete(key);
  set.set(key, Math.max(until, previous));
  const now = Date.now();
  let forgotten = 0;
  // Oldest first (entries are added in roughly the order they pass); a passed entry deeper in
  // the set is dropped when it is next looked up.
  for (const [k, u] of set) {
    if (set.size <= max || k === key) break;
    set.delete(k);
    if (u > now) forgotten = Math.max(forgotten, u);
  }
  return forgotten;
}
