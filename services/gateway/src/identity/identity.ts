import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { createLocalJWKSet, errors as joseErrors, JSONWebKeySet, jwtVerify } from 'jose';
import { Subscription } from 'nats';
import {
  ACCESS_TOKEN_SECONDS,
  ApiKeyInfo,
  authEventTypes as A,
  EventEnvelope,
  KeelError,
  Permission,
  revokedSessionKey,
  permissionsOf,
  TOKEN_AUDIENCE,
  TOKEN_ISSUER,
} from '@keel/contracts';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { decodeJson, KEEL_CONFIG, MESSAGING, Messaging, RpcClient } from '@keel/messaging';

export interface Identity {
  kind: 'user' | 'api_key';
  id: string;
  tenantId: string;
  sessionId?: string;
  roles: string[];
  permissions: ReadonlySet<string>;
  /** Seconds since epoch after which this identity must be checked again. */
  expiresAt: number;
}

const API_KEY_CACHE_MS = 30_000;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MAX_CACHE = 20_000;

/**
 * Who a bearer credential is. Access tokens (JWT, EdDSA) are verified locally against the
 * auth service's JWKS, and a verified token is cached until it expires, so a repeated token
 * costs no signature check. API keys are checked with the auth service and cached briefly.
 * Revocations are pushed, not polled: every session or API key revocation is an event that
 * each gateway hears on NATS and applies at once.
 */
@Injectable()
export class IdentityVerifier implements OnModuleInit, OnModuleDestroy {
  private jwks?: ReturnType<typeof createLocalJWKSet>;
  private jwksFetchedAt = 0;
  private readonly tokens = new Map<string, Identity>();
  private readonly apiKeys = new Map<string, { identity: Identity; at: number }>();
  private readonly revokedSessions = new Map<string, number>();
  private readonly revokedKeys = new Set<string>();
  private sub?: Subscription;

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
          this.onEvent(decodeJson<EventEnvelope>(msg.data));
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
      this.revokedSessions.set(e.aggregateId, Date.now() + (ACCESS_TOKEN_SECONDS + 60) * 1000);
      for (const [token, id] of this.tokens) if (id.sessionId === e.aggregateId) this.tokens.delete(token);
    } else if (e.type === A.apiKeyRevoked) {
      this.revokedKeys.add(e.aggregateId);
      for (const [secret, entry] of this.apiKeys) if (entry.identity.id === e.aggregateId) this.apiKeys.delete(secret);
    } else if (e.type === A.signingKeyRotated) {
      this.jwks = undefined;
    }
  }

  async verify(credential: string): Promise<Identity> {
    if (!credential.startsWith('keel_') && !JWT_SHAPE.test(credential)) {
      throw new KeelError('unauthorized', 'The bearer token is not valid.');
    }
    const identity = credential.startsWith('keel_') ? await this.apiKey(credential) : await this.accessToken(credential);
    if (identity.sessionId && this.isRevoked(identity.sessionId)) throw new KeelError('invalid_token', 'This session has been revoked; sign in again.');
    if (identity.kind === 'api_key' && this.revokedKeys.has(identity.id)) throw new KeelError('invalid_token', 'This API key has been revoked.');
    return identity;
  }

  private isRevoked(sessionId: string): boolean {
    const until = this.revokedSessions.get(sessionId);
    if (until === undefined) return false;
    if (until < Date.now()) {
      this.revokedSessions.delete(sessionId);
      return false;
    }
    return true;
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
    // A revocation this gateway did not hear (it was away, or started later) is in Redis.
    // Redis away: the pushed revocations still apply; a gateway that missed one while Redis is also away would not know.
    const revoked = await this.redis.exists(revokedSessionKey(this.config.KEEL_REDIS_PREFIX, String(payload.sid))).catch(() => 0);
    if (revoked) {
      this.revokedSessions.set(String(payload.sid), payload.exp! * 1000);
      throw new KeelError('invalid_token', 'This session has been revoked; sign in again.');
    }
    const roles = Array.isArray(payload.roles) ? (payload.roles as string[]) : [];
    // `perms` carries custom roles' permissions; tokens without it hold their system roles'.
    const perms = Array.isArray(payload.perms) ? new Set(payload.perms as string[]) : permissionsOf(roles);
    const identity: Identity = {
      kind: 'user',
      id: String(payload.sub),
      tenantId: String(payload.tid),
      sessionId: String(payload.sid),
      roles,
      permissions: perms,
      expiresAt: payload.exp!,
    };
    this.remember(this.tokens, token, identity);
    return identity;
  }

  private async apiKey(secret: string): Promise<Identity> {
    const hit = this.apiKeys.get(secret);
    if (hit && Date.now() - hit.at < API_KEY_CACHE_MS && hit.identity.expiresAt * 1000 > Date.now()) return hit.identity;
    const info = await this.rpc.request<ApiKeyInfo>('qry.auth.verify_api_key', { secret });
    const identity: Identity = {
      kind: 'api_key',
      id: info.id,
      tenantId: info.tenantId,
      roles: [],
      permissions: new Set(info.permissions as Permission[]),
      expiresAt: Math.floor(new Date(info.expiresAt).getTime() / 1000),
    };
    this.remember(this.apiKeys, secret, { identity, at: Date.now() });
    return identity;
  }

  private remember<V>(map: Map<string, V>, key: string, value: V): void {
    map.set(key, value);
    if (map.size > MAX_CACHE) map.delete(map.keys().next().value!);
  }
}
