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
  PLATFORM_TENANT,
  parseOrThrow,
  SessionInfo,
  TenantSettings,
  TokenPair,
} from '@keel/contracts';
import { randomToken, sha256Hex } from '@keel/crypto';
import { inTenant, tenantQuery } from '@keel/database';
import { Outbox, outboxEnvelope } from '@keel/event-sourcing';
import { KEEL_LOGGER, MessagePattern } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { AUTH_SCHEMA, CROSS_TENANT_DS } from '../database/schema';
import { TokenKeys } from '../keys/token-keys';
import { MfaService, SecondFactor } from '../mfa/mfa.service';
import { Lockout, Outcome } from '../users/lockout';
import { TenantLookup } from '../users/tenant-lookup';
import { SignInAlerts } from '../security/sign-in-alerts';
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
  reauthenticate: authRpc.reauthenticate.request,
};

/**
 * A hash to verify against when the account does not exist (or has no password), made with the
 * same Argon2id parameters as every stored hash, so the verify costs the same.
 */
let decoyHash: Promise<string> | undefined;
const decoy = () => (decoyHash ??= argon2.hash(randomToken(), ARGON2_OPTIONS));

/** Where a sign-in to an unknown or inactive tenant looks its user up: no tenant has this id, so nothing is found, at the same cost. */
const NO_TENANT = '00000000-0000-0000-0000-000000000000';
/** The user a sign-in with an unknown email reads from the log: nobody has this id, so the read costs what a real user's does. */
const NO_USER = '00000000-0000-0000-0000-000000000000';

/** How the person proved who they are (RFC 8176), by the second factor a right password came with. */
function amrOf(secondFactor: SecondFactor): string[] {
  return secondFactor === 'passed' ? ['mfa', 'otp', 'pwd'] : ['pwd'];
}

/** Why a right password does not sign in yet: its second factor refused or missing; undefined when it passed (or none is enrolled). */
function secondFactorRefusal(secondFactor: SecondFactor): KeelError | undefined {
  if (secondFactor === 'refused') {
    return new KeelError('mfa_required', 'The second factor is not right or was already used; send "totp" with the current code from your authenticator, or an unused "recoveryCode".');
  }
  if (secondFactor === 'missing') {
    return new KeelError('mfa_required', 'This account has a second factor; send "totp" with the code from your authenticator, or "recoveryCode" with one of your recovery codes.');
  }
  return undefined;
}

/** Postgres answers `extract(epoch …)` as text (numeric). */
const seconds = (value: unknown): number => Math.floor(Number(value));

/** When and how a session's person last proved who they are (the access token's `auth_time` and `amr`). */
interface Proof {
  authTime: number;
  amr: string[];
}

/** A session's row as its answers show it. */
export function sessionInfo(r: Record<string, unknown>): SessionInfo {
  return {
    id: r.id as string, tenantId: r.tenant_id as string, userId: r.user_id as string, createdAt: (r.created_at as Date).toISOString(),
    lastUsedAt: (r.last_used_at as Date).toISOString(), expiresAt: (r.expires_at as Date).toISOString(),
    revokedAt: r.revoked_at ? (r.revoked_at as Date).toISOString() : null,
  };
}

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
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
    private readonly alerts: SignInAlerts,
  ) {
    void decoy();
  }

  private invalid(): KeelError {
    return new KeelError('invalid_credentials', 'The email, password or tenant is not right.');
  }

  /**
   * Signs in. Every refusal takes the same path, so its time tells nothing (unknown tenant, unknown
   * email, disabled user, wrong password): the tenant is looked up on the log (never from a cache),
   * the lockout slot taken, the email's reservation read (under a tenant id nobody has when the
   * tenant is unknown or inactive), one Argon2id verify with the same parameters (against a decoy
   * hash when there is no account or no password), and a user read from the log (one nobody is,
   * when the email is unknown). A failure charged to an existing account (`auth.user.login_failed`,
   * and `auth.user.locked` when the lockout locks it) is appended after the answer, as the only
   * work an unknown email could not match; the lockout itself is in Redis before the answer.
   */
  @MessagePattern(authRpc.login.subject)
  async login(body: unknown): Promise<TokenPair> {
    const { client: c, payload } = parseOrThrow(requests.login, body, 'sign-in');
    let tenantId: string = PLATFORM_TENANT;
    let settings: TenantSettings = DEFAULT_TENANT_SETTINGS;
    let account = `${PLATFORM_TENANT}:${payload.email}`;
    if (payload.tenant) {
      const tenant = await this.tenants.current(payload.tenant);
      if (tenant && tenant.status === 'active') {
        tenantId = tenant.id;
        settings = { ...DEFAULT_TENANT_SETTINGS, ...tenant.settings };
        account = `${tenantId}:${payload.email}`;
        // Before the password is tried: an attempt from outside the tenant's networks counts for nothing.
        requireAllowedNetwork(c.ip, settings.allowedIpRanges);
      } else {
        // A suspended, closed or unknown tenant's sign-ins fail as a wrong password does, and as slowly.
        tenantId = NO_TENANT;
        account = `unknown:${payload.tenant}:${payload.email}`;
      }
    }
    const limit = settings.maxFailedLogins;
    const attempt = await this.lockout.begin(account, c.ip, limit);
    if (!attempt.allowed) {
      throw new KeelError('account_locked', `Too many failed sign-ins; try again in ${Math.ceil(attempt.retryAfterMs! / 1000)} s.`);
    }
    const actor = (userId: string) => ({ kind: 'user' as const, id: userId, tenantId, ...(c.ip ? { ip: c.ip } : {}), ...(c.userAgent ? { userAgent: c.userAgent } : {}) });
    const meta = (userId: string): CommandMeta => ({ actor: actor(userId), correlationId: c.correlationId });
    // Every path ends the attempt: a failure counts towards the lock, a success clears it.
    let outcome: Outcome = 'neutral';
    let found: { user_id: string; password_hash: string | null } | undefined;
    /** The existing user a failure is charged to (none for an unknown email). */
    let charged: string | undefined;
    let user;
    let secondFactor: SecondFactor = 'not_enrolled';
    try {
      [found] = await tenantQuery(
        this.ds,
        tenantId,
        `SELECT r.user_id, c.password_hash FROM "${AUTH_SCHEMA}".email_reservations r
         LEFT JOIN "${AUTH_SCHEMA}".credentials c ON c.user_id = r.user_id WHERE r.tenant_id = $1 AND r.email = $2`,
        [tenantId, payload.email],
      );
      const ok = await argon2.verify(found?.password_hash ?? (await decoy()), payload.password);
      // Found or not, a user is read from the log; a reservation whose user never reached the log
      // (its creation failed) has nobody to charge.
      const loaded = await this.users.load(tenantId, found?.user_id ?? NO_USER).catch((error: unknown) => {
        if (error instanceof KeelError && error.code === 'not_found') return null;
        throw error;
      });
      if (!found || !found.password_hash || !ok || !loaded) {
        outcome = 'failure';
        if (found && loaded) charged = found.user_id;
        throw this.invalid();
      }
      user = loaded;
      if (user.state.status !== 'active') throw this.invalid();
      secondFactor = await this.mfa.atSignIn(tenantId, found.user_id, payload, meta(found.user_id));
      const refusal = secondFactorRefusal(secondFactor);
      if (refusal) {
        if (secondFactor === 'refused') {
          outcome = 'failure';
          charged = found.user_id;
        }
        throw refusal;
      }
      if (secondFactor === 'not_enrolled' && settings.mfaRequired) {
        throw new KeelError('mfa_required', 'This tenant requires a second factor and this account has none enrolled; ask an administrator to let you enrol one.');
      }
      outcome = 'success';
    } finally {
      // Postgres or the log away: the attempt ends as neutral, or its slot stays taken and an outage locks the account.
      const { lockedUntil } = await this.lockout.end(account, c.ip, limit, outcome);
      const lockedUser = lockedUntil !== undefined ? found?.user_id : undefined;
      if (charged || lockedUser) this.recordFailure(tenantId, charged, lockedUser, lockedUntil, meta((charged ?? lockedUser)!), c.ip);
      // A failure with nobody to charge (an email the tenant does not have: credential stuffing)
      // still counts towards the tenant's failed sign-ins alert; after the answer, as the rest.
      else if (outcome === 'failure' && tenantId !== NO_TENANT) {
        void this.alerts.countUnknownAccount(tenantId, c.correlationId).catch((err: unknown) => this.logger.warn({ err, tenantId }, 'a failed sign-in could not be counted for the alert rule'));
      }
    }

    return this.startSession(tenantId, found.user_id, await this.users.tenantScopeRoles(tenantId, found.user_id, user.state.roles), settings, meta(found.user_id), amrOf(secondFactor));
  }

  /**
   * Appends a failed sign-in (and the lock it led to) to the user's log, after the answer: an
   * unknown email has no log to append to, so awaiting it would tell existing accounts apart. The
   * lock itself is already in Redis; these events are the trail. A failure to append is logged.
   */
  private recordFailure(tenantId: string, charged: string | undefined, lockedUser: string | undefined, until: string | undefined, meta: CommandMeta, ip: string | undefined): void {
    void (async () => {
      if (charged) await this.users.run(tenantId, charged, { type: 'record_login_failure', data: ip ? { ip } : {} }, meta);
      if (lockedUser && until !== undefined) await this.users.run(tenantId, lockedUser, { type: 'record_lock', data: { until } }, meta);
    })().catch((err: unknown) => {
      if (err instanceof KeelError && err.code === 'not_found') return;
      this.logger.warn({ err, tenantId, userId: charged ?? lockedUser }, 'a failed sign-in could not be recorded on the user\'s log');
    });
  }

  /**
   * Starts a session for a user whose identity is proven (password and second factor here; the
   * identity provider for single sign-on) and issues its first tokens. `amr` says how (RFC 8176;
   * `fed` for an identity provider); the session's auth_time is now.
   */
  async startSession(tenantId: string, userId: string, roles: string[], settings: TenantSettings, meta: CommandMeta, amr: string[] = ['fed']): Promise<TokenPair> {
    requireAllowedNetwork(meta.actor.ip, settings.allowedIpRanges);
    const sessionId = newEventId();
    const secret = randomToken();
    const timeoutSeconds = settings.sessionTimeoutMinutes * 60;
    // The session, the sessions beyond the tenant's limit it ends, and all their events: one transaction.
    const { started, revoked, authTime } = await inTenant(this.ds, tenantId, async (m) => {
      const [row] = await m.query(
        `INSERT INTO ${SESSIONS} (id, tenant_id, user_id, refresh_hash, expires_at, version, auth_time, amr)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), 1, now(), $6) RETURNING extract(epoch FROM auth_time) AS auth_time`,
        [sessionId, tenantId, userId, sha256Hex(secret), timeoutSeconds, amr],
      );
      const started = await this.outbox.record(m, [{ tenantId, aggregateType: 'session', aggregateId: sessionId, version: 1, type: A.sessionStarted, data: { userId, amr } }], meta);
      return { started, revoked: await this.revoker.keepNewestIn(m, tenantId, userId, settings.maxConcurrentSessions, meta), authTime: seconds(row.auth_time) };
    });
    await this.revoker.settle(revoked);
    await this.outbox.sent(started);
    return this.tokens(userId, tenantId, sessionId, secret, roles, timeoutSeconds, { authTime, amr });
  }

  private async tokens(userId: string, tenantId: string, sessionId: string, secret: string, roles: string[], secondsLeft: number, proof: Proof): Promise<TokenPair> {
    const { accessToken, expiresIn } = await this.accessToken(userId, tenantId, sessionId, roles, secondsLeft, proof);
    return { accessToken, refreshToken: `${sessionId}.${secret}`, tokenType: 'Bearer', expiresIn };
  }

  /** An access token of the session, carrying when and how its person last proved who they are. */
  private async accessToken(userId: string, tenantId: string, sessionId: string, roles: string[], secondsLeft: number, proof: Proof): Promise<{ accessToken: string; expiresIn: number }> {
    const expiresIn = Math.min(ACCESS_TOKEN_SECONDS, Math.floor(secondsLeft));
    // Custom roles resolve here, so gateways need no role lookups; changes apply at the next refresh.
    const catalog = await this.catalog.roles(tenantId);
    const perms = [...new Set(roles.flatMap((r) => catalog.get(r) ?? []))].sort();
    const accessToken = await this.keys.sign({ sub: userId, tid: tenantId, sid: sessionId, roles, perms, auth_time: proof.authTime, amr: proof.amr }, expiresIn);
    return { accessToken, expiresIn };
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
    return this.refreshOnce(body, false);
  }

  private async refreshOnce(body: unknown, retried: boolean): Promise<TokenPair> {
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
        // The address that presented the spent token, sealed as the session's user's (erased with them).
        actor: { kind: 'system', id: 'auth', tenantId, onBehalfOf: userId, ...(c.ip ? { ip: c.ip } : {}) },
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
    const [entry] = await this.outbox.prepare([refreshed]);
    // One statement (one transaction) turns the token (only if it is still the current one and
    // nothing else changed the session: two refreshes racing with the same token, one wins),
    // adds its event to the outbox and reads the tenant-scope role grants.
    const rotated: { seconds_left: string; auth_time: string; amr: string[]; granted: string[] | null }[] = await this.crossTenant.query(
      `WITH s AS (
         UPDATE ${SESSIONS} SET refresh_hash = $3, generation = generation + 1, last_used_at = now(), version = $6
         WHERE id = $1 AND refresh_hash = $2 AND version = $6 - 1 AND revoked_at IS NULL AND expires_at > now()
         RETURNING extract(epoch FROM expires_at - now()) AS seconds_left, extract(epoch FROM auth_time) AS auth_time, amr),
       o AS (
         INSERT INTO ${this.outbox.table} (event_id, tenant_id, subject, envelope)
         SELECT $7::uuid, $5, $8, $9::json FROM s RETURNING seq)
       SELECT s.seconds_left, s.auth_time, s.amr, (SELECT count(*) FROM o) AS queued,
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
      // The token is still the current one, but the session changed meanwhile (a re-authentication
      // gave it a fresh auth_time): turn it again from the session as it is now, once.
      if (now && !now.revoked_at && now.live && !retried) return this.refreshOnce(body, true);
      throw invalid();
    }
    const roles = [...new Set([...(user.state.status === 'active' ? user.state.roles : []), ...(rotated[0]!.granted ?? [])])];
    // A refresh proves only that the refresh token is held: the session's auth_time and amr carry over.
    const proof = { authTime: seconds(rotated[0]!.auth_time), amr: rotated[0]!.amr ?? [] };
    return this.tokens(userId, tenantId, sessionId, next, roles, Number(rotated[0]!.seconds_left), proof);
  }

  /**
   * Re-authentication of a signed-in session: the password and, when the user has a second
   * factor, a code. It gives the session a fresh auth_time (so routes that need a recent sign-in
   * pass again) and answers an access token that carries it; the refresh token stays. Failures
   * count towards the same lockout as sign-in (a stolen token cannot guess the password faster
   * here), and are charged to the user's log as failed sign-ins.
   */
  @MessagePattern(authRpc.reauthenticate.subject)
  async reauthenticate(body: unknown): Promise<{ accessToken: string; tokenType: 'Bearer'; expiresIn: number; authTime: string }> {
    const { meta, payload } = parseOrThrow(requests.reauthenticate, body, 're-authentication');
    const { tenantId, userId, sessionId, data } = payload;
    if (meta.actor.kind !== 'user' || meta.actor.id !== userId) throw new KeelError('forbidden', 'Only a signed-in user re-authenticates, for their own session.');
    const ended = () => new KeelError('invalid_token', 'This session has ended; sign in again.');
    const [session] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT user_id FROM ${SESSIONS} WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > now()`,
      [tenantId, sessionId],
    );
    if (!session || session.user_id !== userId) throw ended();
    const user = await this.users.load(tenantId, userId);
    if (user.state.status !== 'active') throw new KeelError('invalid_token', 'This account is disabled.');
    let settings: TenantSettings = DEFAULT_TENANT_SETTINGS;
    if (tenantId !== PLATFORM_TENANT) {
      const tenant = await this.tenants.find(tenantId);
      if (tenant?.status !== 'active') throw new KeelError('invalid_token', 'This tenant is not active; its sessions have ended.');
      settings = { ...DEFAULT_TENANT_SETTINGS, ...tenant.settings };
      requireAllowedNetwork(meta.actor.ip, settings.allowedIpRanges);
    }
    const ip = meta.actor.ip;
    const account = `${tenantId}:${user.state.email}`;
    const limit = settings.maxFailedLogins;
    const attempt = await this.lockout.begin(account, ip, limit);
    if (!attempt.allowed) throw new KeelError('account_locked', `Too many failed sign-ins; try again in ${Math.ceil(attempt.retryAfterMs! / 1000)} s.`);
    let outcome: Outcome = 'neutral';
    let secondFactor: SecondFactor;
    const asUser: CommandMeta = { actor: meta.actor, correlationId: meta.correlationId };
    try {
      const [cred] = await tenantQuery(this.ds, tenantId, `SELECT password_hash FROM "${AUTH_SCHEMA}".credentials WHERE user_id = $1`, [userId]);
      const ok = await argon2.verify(cred?.password_hash ?? (await decoy()), data.password);
      if (!cred?.password_hash || !ok) {
        outcome = 'failure';
        throw new KeelError('invalid_credentials', cred?.password_hash ? 'The password is not right.' : 'This account has no password (it signs in with single sign-on): sign in again through the identity provider instead.');
      }
      secondFactor = await this.mfa.atSignIn(tenantId, userId, data, asUser);
      const refusal = secondFactorRefusal(secondFactor);
      if (refusal) {
        if (secondFactor === 'refused') outcome = 'failure';
        throw refusal;
      }
      outcome = 'success';
    } finally {
      const { lockedUntil } = await this.lockout.end(account, ip, limit, outcome);
      if (outcome === 'failure' || lockedUntil !== undefined) this.recordFailure(tenantId, outcome === 'failure' ? userId : undefined, lockedUntil !== undefined ? userId : undefined, lockedUntil, asUser, ip);
    }
    const amr = amrOf(secondFactor);
    const renewed = await inTenant(this.ds, tenantId, async (m) => {
      const [[row]]: [{ version: number; auth_time: string; seconds_left: string }[], number] = await m.query(
        `UPDATE ${SESSIONS} SET auth_time = now(), amr = $3, last_used_at = now(), version = version + 1
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > now()
         RETURNING version, extract(epoch FROM auth_time) AS auth_time, extract(epoch FROM expires_at - now()) AS seconds_left`,
        [tenantId, sessionId, amr],
      );
      if (!row) return null;
      const receipt = await this.outbox.record(
        m,
        [{ tenantId, aggregateType: 'session', aggregateId: sessionId, version: Number(row.version), type: A.sessionReauthenticated, data: { amr } }],
        meta,
      );
      return { receipt, authTime: seconds(row.auth_time), secondsLeft: Number(row.seconds_left) };
    });
    // Revoked or expired while the password was checked.
    if (!renewed) throw ended();
    await this.outbox.sent(renewed.receipt);
    const roles = await this.users.tenantScopeRoles(tenantId, userId, user.state.roles);
    const { accessToken, expiresIn } = await this.accessToken(userId, tenantId, sessionId, roles, renewed.secondsLeft, { authTime: renewed.authTime, amr });
    return { accessToken, tokenType: 'Bearer', expiresIn, authTime: new Date(renewed.authTime * 1000).toISOString() };
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
      items: rows.map(sessionInfo),
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
