import { Inject, Injectable } from '@nestjs/common';
import * as argon2 from 'argon2';
import { DataSource } from 'typeorm';
import { z } from 'zod';
import {
  ACCESS_TOKEN_SECONDS,
  authEventTypes as A,
  authRpc,
  CommandMeta,
  DEFAULT_TENANT_SETTINGS,
  KeelError,
  newEventId,
  parseOrThrow,
  SessionInfo,
  TenantSettings,
  TokenPair,
} from '@keel/contracts';
import { randomToken, sha256Hex } from '@keel/crypto';
import { inTenant, tenantQuery } from '@keel/database';
import { Outbox, outboxEnvelope } from '@keel/event-sourcing';
import { MessagePattern } from '@keel/messaging';
import { AUTH_SCHEMA, CROSS_TENANT_DS } from '../database/schema';
import { TokenKeys } from '../keys/token-keys';
import { MfaService } from '../mfa/mfa.service';
import { Lockout, Outcome } from '../users/lockout';
import { TenantLookup } from '../users/tenant-lookup';
import { ARGON2_OPTIONS, UsersService } from '../users/users.service';
import { RoleCatalog } from '../rbac/role-catalog';
import { requireAllowedNetwork } from './allowed-network';
import { SessionRevoker } from './session-revoker';

const SESSIONS = `"${AUTH_SCHEMA}".sessions`;
// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  login: authRpc.login.request,
  refresh: authRpc.refresh.request,
  revoke: authRpc.revokeSession.request,
  list: authRpc.sessions.request,
  jwks: authRpc.jwks.request,
  rotate: authRpc.rotateSigningKey.request,
};

/** A hash to verify against when the account does not exist, so timing does not tell. */
let decoyHash: Promise<string> | undefined;

@Injectable()
export class SessionsService {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(CROSS_TENANT_DS) private readonly crossTenant: DataSource,
    private readonly users: UsersService,
    private readonly tenants: TenantLookup,
    private readonly lockout: Lockout,
    private readonly keys: TokenKeys,
    private readonly outbox: Outbox,
    private readonly revoker: SessionRevoker,
    private readonly catalog: RoleCatalog,
    private readonly mfa: MfaService,
  ) {}

  private invalid(): KeelError {
    return new KeelError('invalid_credentials', 'The email, password or tenant is not right.');
  }

  @MessagePattern(authRpc.login.subject)
  async login(body: unknown): Promise<TokenPair> {
    const { client: c, payload } = parseOrThrow(requests.login, body, 'sign-in');
    let tenantId = 'platform';
    let settings: TenantSettings = DEFAULT_TENANT_SETTINGS;
    if (payload.tenant) {
      const tenant = await this.tenants.find(payload.tenant);
      // A suspended or closed tenant's users cannot sign in; the answer does not say why.
      if (!tenant || tenant.status !== 'active') throw this.invalid();
      tenantId = tenant.id;
      settings = { ...DEFAULT_TENANT_SETTINGS, ...tenant.settings };
      // Before the password is tried: an attempt from outside the tenant's networks counts for nothing.
      requireAllowedNetwork(c.ip, settings.allowedIpRanges);
    }
    const account = `${tenantId}:${payload.email}`;
    const limit = settings.maxFailedLogins;
    const attempt = await this.lockout.begin(account, c.ip, limit);
    if (!attempt.allowed) {
      throw new KeelError('account_locked', `Too many failed sign-ins; try again in ${Math.ceil(attempt.retryAfterMs! / 1000)} s.`);
    }
    const [found] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT r.user_id, c.password_hash FROM "${AUTH_SCHEMA}".email_reservations r
       LEFT JOIN "${AUTH_SCHEMA}".credentials c ON c.user_id = r.user_id WHERE r.tenant_id = $1 AND r.email = $2`,
      [tenantId, payload.email],
    ).catch(async (error: unknown) => {
      // Postgres away: end the attempt as neutral, or its slot stays taken and an outage locks the account.
      await this.lockout.end(account, c.ip, limit, 'neutral').catch(() => undefined);
      throw error;
    });
    const actor = (userId: string) => ({ kind: 'user' as const, id: userId, tenantId, ...(c.ip ? { ip: c.ip } : {}), ...(c.userAgent ? { userAgent: c.userAgent } : {}) });
    const meta = (userId: string): CommandMeta => ({ actor: actor(userId), correlationId: c.correlationId });
    // Every path ends the attempt: a failure counts towards the lock, a success clears it.
    let outcome: Outcome = 'neutral';
    let user;
    try {
      decoyHash ??= argon2.hash(randomToken(), ARGON2_OPTIONS);
      const ok = await argon2.verify(found?.password_hash ?? (await decoyHash), payload.password);
      if (!found || !found.password_hash || !ok) {
        outcome = 'failure';
        // A reservation whose user never reached the log (its creation failed) has nobody to charge.
        if (found) {
          await this.users.run(tenantId, found.user_id, { type: 'record_login_failure', data: c.ip ? { ip: c.ip } : {} }, meta(found.user_id)).catch((error: unknown) => {
            if (!(error instanceof KeelError && error.code === 'not_found')) throw error;
          });
        }
        throw this.invalid();
      }
      user = await this.users.load(tenantId, found.user_id);
      if (user.state.status !== 'active') throw this.invalid();
      const secondFactor = await this.mfa.atSignIn(tenantId, found.user_id, payload, meta(found.user_id));
      if (secondFactor === 'refused') {
        outcome = 'failure';
        await this.users.run(tenantId, found.user_id, { type: 'record_login_failure', data: c.ip ? { ip: c.ip } : {} }, meta(found.user_id));
        throw new KeelError('mfa_required', 'The second factor is not right or was already used; send "totp" with the current code from your authenticator, or an unused "recoveryCode".');
      }
      if (secondFactor === 'missing') {
        throw new KeelError('mfa_required', 'This account has a second factor; send "totp" with the code from your authenticator, or "recoveryCode" with one of your recovery codes.');
      }
      if (secondFactor === 'not_enrolled' && settings.mfaRequired) {
        throw new KeelError('mfa_required', 'This tenant requires a second factor and this account has none enrolled; ask an administrator to let you enrol one.');
      }
      outcome = 'success';
    } finally {
      const { lockedUntil } = await this.lockout.end(account, c.ip, limit, outcome);
      if (lockedUntil !== undefined && found) {
        await this.users.run(tenantId, found.user_id, { type: 'record_lock', data: { until: lockedUntil } }, meta(found.user_id));
      }
    }

    return this.startSession(tenantId, found.user_id, await this.tenantScopeRoles(tenantId, found.user_id, user.state.roles), settings, meta(found.user_id));
  }

  /**
   * Starts a session for a user whose identity is proven (password and second factor here; the
   * identity provider for single sign-on) and issues its first tokens.
   */
  async startSession(tenantId: string, userId: string, roles: string[], settings: TenantSettings, meta: CommandMeta): Promise<TokenPair> {
    requireAllowedNetwork(meta.actor.ip, settings.allowedIpRanges);
    const sessionId = newEventId();
    const secret = randomToken();
    const timeoutSeconds = settings.sessionTimeoutMinutes * 60;
    // The session, the sessions beyond the tenant's limit it ends, and all their events: one transaction.
    const { started, revoked } = await inTenant(this.ds, tenantId, async (m) => {
      await m.query(
        `INSERT INTO ${SESSIONS} (id, tenant_id, user_id, refresh_hash, expires_at, version) VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), 1)`,
        [sessionId, tenantId, userId, sha256Hex(secret), timeoutSeconds],
      );
      const started = await this.outbox.record(m, [{ tenantId, aggregateType: 'session', aggregateId: sessionId, version: 1, type: A.sessionStarted, data: { userId } }], meta);
      return { started, revoked: await this.revoker.keepNewestIn(m, tenantId, userId, settings.maxConcurrentSessions, meta) };
    });
    await this.revoker.settle(revoked);
    await this.outbox.sent(started);
    return this.tokens(userId, tenantId, sessionId, secret, roles, timeoutSeconds);
  }

  /** The user's own roles and those granted at tenant scope (team-scope grants stay out of tokens). */
  private async tenantScopeRoles(tenantId: string, userId: string, own: string[]): Promise<string[]> {
    const granted: { role: string }[] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT role FROM "${AUTH_SCHEMA}".role_assignments WHERE tenant_id = $1 AND user_id = $2 AND team_id IS NULL`,
      [tenantId, userId],
    );
    return [...new Set([...own, ...granted.map((g) => g.role)])];
  }

  private async tokens(userId: string, tenantId: string, sessionId: string, secret: string, roles: string[], secondsLeft: number): Promise<TokenPair> {
    const expiresIn = Math.min(ACCESS_TOKEN_SECONDS, Math.floor(secondsLeft));
    // Custom roles resolve here, so gateways need no role lookups; changes apply at the next refresh.
    const catalog = await this.catalog.roles(tenantId);
    const perms = [...new Set(roles.flatMap((r) => catalog.get(r) ?? []))].sort();
    const accessToken = await this.keys.sign({ sub: userId, tid: tenantId, sid: sessionId, roles, perms }, expiresIn);
    return { accessToken, refreshToken: `${sessionId}.${secret}`, tokenType: 'Bearer', expiresIn };
  }

  /**
   * Rotates the refresh token. The token presented must be the session's current one; a
   * token that was already used means it leaked, and the whole session is revoked. The
   * user's status and roles come from its log (not the users read model, which may lag a
   * role change or a re-enable), and are read before the token turns: a failure there leaves
   * the presented token valid.
   */
  @MessagePattern(authRpc.refresh.subject)
  async refresh(body: unknown): Promise<TokenPair> {
    const { client: c, payload } = parseOrThrow(requests.refresh, body, 'refresh');
    const [sessionId, secret] = payload.refreshToken.split('.');
    if (!sessionId || !secret || !z.uuid().safeParse(sessionId).success) throw new KeelError('invalid_token', 'The refresh token is not valid.');
    const invalid = () => new KeelError('invalid_token', 'The refresh token is not valid (expired, revoked or already used); sign in again.');
    // The refresh token is the credential: its session is found in any tenant.
    const [session] = await this.crossTenant.query(`SELECT tenant_id, user_id, revoked_at, refresh_hash, version FROM ${SESSIONS} WHERE id = $1`, [sessionId]);
    if (!session || session.revoked_at) throw invalid();
    const { tenant_id: tenantId, user_id: userId } = session as { tenant_id: string; user_id: string };
    const reused = async () => {
      await this.revoker.revokeOne(tenantId, sessionId, 'refresh_token_reuse', {
        actor: { kind: 'system', id: 'auth', ...(c.ip ? { ip: c.ip } : {}) },
        correlationId: c.correlationId,
      });
      return invalid();
    };
    if (session.refresh_hash !== sha256Hex(secret)) throw await reused();
    const user = await this.users.load(tenantId, userId).catch((error: unknown) => {
      throw error instanceof KeelError && error.code === 'not_found' ? invalid() : error;
    });
    if (user.state.status !== 'active') {
      await this.revoker.revokeOne(tenantId, sessionId, 'user_disabled', { actor: { kind: 'system', id: 'auth' }, correlationId: c.correlationId });
      throw new KeelError('invalid_token', 'This account is disabled.');
    }
    // A suspended or closed tenant's sessions end with it.
    if (tenantId !== 'platform') {
      const tenant = await this.tenants.find(tenantId);
      if (tenant?.status !== 'active') {
        await this.revoker.revokeOne(tenantId, sessionId, 'tenant_inactive', { actor: { kind: 'system', id: 'auth' }, correlationId: c.correlationId });
        throw new KeelError('invalid_token', 'This tenant is not active; its sessions have ended.');
      }
      // The session stays; it refreshes again from an allowed network.
      requireAllowedNetwork(c.ip, tenant.settings.allowedIpRanges);
    }
    const next = randomToken();
    const version = Number(session.version) + 1;
    const refreshed = outboxEnvelope(
      { tenantId, aggregateType: 'session', aggregateId: sessionId, version, type: A.sessionRefreshed, data: {} },
      { actor: { kind: 'user', id: userId, tenantId, ...(c.ip ? { ip: c.ip } : {}), ...(c.userAgent ? { userAgent: c.userAgent } : {}) }, correlationId: c.correlationId },
    );
    const [entry] = this.outbox.prepare([refreshed]);
    // One statement (one transaction) turns the token (only if it is still the current one and
    // nothing else changed the session: two refreshes racing with the same token, one wins),
    // adds its event to the outbox and reads the tenant-scope role grants.
    const rotated: { seconds_left: string; granted: string[] | null }[] = await this.crossTenant.query(
      `WITH s AS (
         UPDATE ${SESSIONS} SET refresh_hash = $3, generation = generation + 1, last_used_at = now(), version = $6
         WHERE id = $1 AND refresh_hash = $2 AND version = $6 - 1 AND revoked_at IS NULL AND expires_at > now()
         RETURNING extract(epoch FROM expires_at - now()) AS seconds_left),
       o AS (
         INSERT INTO ${this.outbox.table} (event_id, tenant_id, subject, envelope)
         SELECT $7::uuid, $5, $8, $9::json FROM s RETURNING seq)
       SELECT s.seconds_left, (SELECT count(*) FROM o) AS queued,
         (SELECT array_agg(a.role) FROM "${AUTH_SCHEMA}".role_assignments a
          WHERE a.tenant_id = $5 AND a.user_id = $4 AND a.team_id IS NULL) AS granted${this.outbox.notifySql()}
       FROM s`,
      [sessionId, sha256Hex(secret), sha256Hex(next), userId, tenantId, version, entry!.eventId, entry!.subject, entry!.envelope],
    );
    // The rotation and its event committed together; the relay publishes the event in outbox order.
    // A refresh answers tokens, not a position, so it does not wait for that: waiting would put the
    // relay's round trip into every refresh, and a 503 after the commit would make the client's
    // retry a reuse of its spent token, which ends the session.
    if (!rotated.length) {
      // Another refresh with the same token turned it in the meantime: that is a reuse too
      // (one of the two holders is not the client), so the session ends.
      const [now] = await this.crossTenant.query(`SELECT revoked_at, refresh_hash, expires_at > now() AS live FROM ${SESSIONS} WHERE id = $1`, [sessionId]);
      if (now && !now.revoked_at && now.live && now.refresh_hash !== sha256Hex(secret)) throw await reused();
      throw invalid();
    }
    const roles = [...new Set([...(user.state.status === 'active' ? user.state.roles : []), ...(rotated[0]!.granted ?? [])])];
    return this.tokens(userId, tenantId, sessionId, next, roles, Number(rotated[0]!.seconds_left));
  }

  @MessagePattern(authRpc.revokeSession.subject)
  async revoke(body: unknown): Promise<{ revoked: boolean }> {
    const { meta, payload } = parseOrThrow(requests.revoke, body, 'session revocation');
    const revoked = await this.revoker.revokeOne(payload.tenantId, payload.sessionId, 'revoked', meta, payload.onlyOfUser);
    if (!revoked) throw new KeelError('not_found', 'No such active session.');
    return { revoked };
  }

  @MessagePattern(authRpc.sessions.subject)
  async list(body: unknown): Promise<{ items: SessionInfo[] }> {
    const q = parseOrThrow(requests.list, body, 'session listing');
    const rows = await tenantQuery(
      this.ds,
      q.tenantId,
      `SELECT * FROM ${SESSIONS} WHERE tenant_id = $1 ${q.userId ? 'AND user_id = $3' : ''}
       ${q.activeOnly ? 'AND revoked_at IS NULL AND expires_at > now()' : ''} ORDER BY created_at DESC LIMIT $2`,
      q.userId ? [q.tenantId, q.limit, q.userId] : [q.tenantId, q.limit],
    );
    return {
      items: rows.map((r: Record<string, Date | string | null>) => ({
        id: r.id, tenantId: r.tenant_id, userId: r.user_id, createdAt: (r.created_at as Date).toISOString(),
        lastUsedAt: (r.last_used_at as Date).toISOString(), expiresAt: (r.expires_at as Date).toISOString(),
        revokedAt: r.revoked_at ? (r.revoked_at as Date).toISOString() : null,
      })),
    };
  }

  @MessagePattern(authRpc.jwks.subject)
  async jwks(body: unknown) {
    parseOrThrow(requests.jwks, body ?? {}, 'key set');
    return this.keys.jwks();
  }

  @MessagePattern(authRpc.rotateSigningKey.subject)
  async rotate(body: unknown): Promise<{ kid: string; position: number }> {
    const { meta } = parseOrThrow(requests.rotate, body, 'key rotation');
    const rotated = await this.keys.rotate(meta);
    return { kid: rotated.kid, position: rotated.position };
  }
}
