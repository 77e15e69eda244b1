import { Inject, Injectable } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { authEventTypes as A, authRpc, CommandMeta, KeelError, parseOrThrow } from '@keel/contracts';
import { kekFrom, open, seal, sha256Hex } from '@keel/crypto';
import { inTenant, tenantQuery } from '@keel/database';
import { Outbox, OutboxReceipt } from '@keel/event-sourcing';
import { MessagePattern } from '@keel/messaging';
import { AUTH_SCHEMA } from '../database/schema';
import { mayActOn } from '../users/user.decider';
import { SessionRevoker } from '../sessions/session-revoker';
import { Lockout, Outcome } from '../users/lockout';
import { AuthMeta, UsersService } from '../users/users.service';
import { base32Encode, newTotpSecret, otpauthUrl, verifyTotp } from './totp';

const FACTORS = `"${AUTH_SCHEMA}".mfa_factors`;
const CODES = `"${AUTH_SCHEMA}".recovery_codes`;
const ISSUER = 'Keel';
const RECOVERY_CODES = 10;
/** Wrong codes at confirmation or removal before the lockout steps in (a stolen session must not guess its way). */
const CODE_ATTEMPTS = 5;

// Each command parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  start: authRpc.mfaTotpStart.request,
  confirm: authRpc.mfaTotpConfirm.request,
  remove: authRpc.mfaTotpRemove.request,
  reset: authRpc.resetMfa.request,
};

/** What the second factor says about a sign-in whose password was right. */
export type SecondFactor = 'not_enrolled' | 'missing' | 'passed' | 'refused';

/** 50 random bits as `xxxxx-xxxxx` (base32, lower case): typed by hand, used once. */
function newRecoveryCode(): string {
  const text = base32Encode(randomBytes(7)).slice(0, 10).toLowerCase();
  return `${text.slice(0, 5)}-${text.slice(5)}`;
}

/** Case, spaces and dashes do not matter when a code is typed back. */
function recoveryCodeHash(code: string): string {
  return sha256Hex(code.toLowerCase().replace(/[^a-z0-9]/g, ''));
}

function wrongCode(): KeelError {
  return new KeelError('validation_failed', 'The code is not right or was already used; enter the current code from your authenticator.', [
    { field: 'code', message: 'not the current code' },
  ]);
}

/**
 * Time-based one-time passwords (RFC 6238) as a second factor, with single-use recovery
 * codes. A factor is pending until the user proves their authenticator holds the secret;
 * only a confirmed factor is asked for at sign-in. Secrets are sealed under the KEK, bound
 * to the user id, and never leave this service after enrolment.
 */
@Injectable()
export class MfaService {
  private readonly kek: Buffer;

  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly users: UsersService,
    private readonly outbox: Outbox,
    private readonly lockout: Lockout,
    private readonly revoker: SessionRevoker,
    @Inject('KEEL_AUTH_CONFIG') config: KeelConfig,
  ) {
    this.kek = kekFrom(config.KEEL_KEK);
  }

  /** Only the signed-in user manages their own factor: not an API key, not the operator, not an administrator. */
  private ownFactor(meta: AuthMeta, payload: { userId: string }): void {
    if (meta.actor.kind !== 'user' || meta.actor.id !== payload.userId) {
      throw new KeelError('forbidden', 'Only the signed-in user can manage their own second factor.');
    }
  }

  /**
   * Records a change of the user's second factor, in the transaction that makes it. The factor is
   * an aggregate of its own (`mfa_factor`, keyed by the user id; the event types keep their
   * `auth.user.*` names): the user's own log is event-sourced and optimistically appended, so an
   * outbox event may not land on it. Its version outlives the row (a factor is removed and enrolled again).
   */
  private async record(m: EntityManager, tenantId: string, userId: string, type: string, data: Record<string, unknown>, meta: CommandMeta): Promise<OutboxReceipt> {
    const version = await this.outbox.nextVersion(m, { tenantId, aggregateType: 'mfa_factor', aggregateId: userId });
    return this.outbox.record(m, [{ tenantId, aggregateType: 'mfa_factor', aggregateId: userId, version, type, data }], meta);
  }

  private secretOf(userId: string, sealed: Buffer): Buffer {
    return open(this.kek, sealed, userId);
  }

  /**
   * Runs a code check (confirmation or removal) as an attempt, as sign-in does: a slot is taken
   * before the code is checked, and a wrong code counts towards the lock.
   */
  private async attempt<T>(userId: string, check: () => Promise<T>): Promise<T> {
    const key = `mfa:${userId}`;
    const decision = await this.lockout.begin(key, undefined, CODE_ATTEMPTS);
    if (!decision.allowed) throw new KeelError('account_locked', `Too many wrong codes; try again in ${Math.ceil(decision.retryAfterMs! / 1000)} s.`);
    let outcome: Outcome = 'neutral';
    try {
      const result = await check();
      outcome = 'success';
      return result;
    } catch (error) {
      if (error instanceof KeelError && error.code === 'validation_failed') outcome = 'failure';
      throw error;
    } finally {
      await this.lockout.end(key, undefined, CODE_ATTEMPTS, outcome);
    }
  }

  @MessagePattern(authRpc.mfaTotpStart.subject)
  async start(body: unknown): Promise<{ secret: string; otpauthUrl: string }> {
    const { meta, payload } = parseOrThrow(requests.start, body, 'TOTP enrolment');
    this.ownFactor(meta, payload);
    const { tenantId, userId } = payload;
    const user = await this.users.load(tenantId, userId);
    if (user.state.status !== 'active') throw new KeelError('forbidden', 'This account is disabled.');
    const secret = newTotpSecret();
    const receipt = await inTenant(this.ds, tenantId, async (m) => {
      // A pending enrolment is replaced by a new one; a confirmed factor is never overwritten.
      const stored = await m.query(
        `INSERT INTO ${FACTORS} AS f (user_id, tenant_id, secret_enc) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET secret_enc = EXCLUDED.secret_enc, created_at = now(), last_used_step = NULL
         WHERE f.confirmed_at IS NULL RETURNING f.user_id`,
        [userId, tenantId, seal(this.kek, secret, userId)],
      );
      if (!stored.length) {
        throw new KeelError('conflict', 'A TOTP factor is already enrolled; remove it first (DELETE /api/v1/auth/mfa/totp with a current code).');
      }
      return this.record(m, tenantId, userId, A.userMfaEnrolmentStarted, { method: 'totp' }, meta);
    });
    await this.outbox.sent(receipt);
    return { secret: base32Encode(secret), otpauthUrl: otpauthUrl(ISSUER, user.state.email, secret) };
  }

  /** Confirms a pending factor with a current code; answers the recovery codes, which are never shown again. */
  @MessagePattern(authRpc.mfaTotpConfirm.subject)
  async confirm(body: unknown): Promise<{ recoveryCodes: string[] }> {
    const { meta, payload } = parseOrThrow(requests.confirm, body, 'TOTP confirmation');
    this.ownFactor(meta, payload);
    const { tenantId, userId } = payload;
    const recoveryCodes = Array.from({ length: RECOVERY_CODES }, newRecoveryCode);
    const receipt = await this.attempt(userId, () => inTenant(this.ds, tenantId, async (m) => {
      const [factor] = await m.query(`SELECT secret_enc, confirmed_at FROM ${FACTORS} WHERE user_id = $1 AND tenant_id = $2 FOR UPDATE`, [userId, tenantId]);
      if (!factor) throw new KeelError('not_found', 'No TOTP enrolment is in progress; start one with POST /api/v1/auth/mfa/totp.');
      if (factor.confirmed_at) throw new KeelError('conflict', 'The TOTP factor is already confirmed.');
      const step = verifyTotp(this.secretOf(userId, factor.secret_enc), payload.code, Date.now());
      if (step === null) throw wrongCode();
      // The confirming code counts as used: it cannot sign anyone in afterwards.
      await m.query(`UPDATE ${FACTORS} SET confirmed_at = now(), last_used_step = $2 WHERE user_id = $1`, [userId, step]);
      await m.query(`DELETE FROM ${CODES} WHERE user_id = $1`, [userId]);
      await m.query(`INSERT INTO ${CODES} (user_id, tenant_id, code_hash) SELECT $1, $2, unnest($3::text[])`, [userId, tenantId, recoveryCodes.map(recoveryCodeHash)]);
      return this.record(m, tenantId, userId, A.userMfaEnrolled, { method: 'totp', recoveryCodes: RECOVERY_CODES }, meta);
    }));
    await this.outbox.sent(receipt);
    return { recoveryCodes };
  }

  /** Removes the factor and its recovery codes; needs a current, unused code. */
  @MessagePattern(authRpc.mfaTotpRemove.subject)
  async remove(body: unknown): Promise<{ removed: true }> {
    const { meta, payload } = parseOrThrow(requests.remove, body, 'TOTP removal');
    this.ownFactor(meta, payload);
    const { tenantId, userId } = payload;
    const receipt = await this.attempt(userId, () => inTenant(this.ds, tenantId, async (m) => {
      const [factor] = await m.query(
        `SELECT secret_enc, last_used_step FROM ${FACTORS} WHERE user_id = $1 AND tenant_id = $2 AND confirmed_at IS NOT NULL FOR UPDATE`,
        [userId, tenantId],
      );
      if (!factor) throw new KeelError('not_found', 'No TOTP factor is enrolled for this account.');
      const step = verifyTotp(this.secretOf(userId, factor.secret_enc), payload.code, Date.now(), stepOf(factor.last_used_step));
      if (step === null) throw wrongCode();
      await m.query(`DELETE FROM ${FACTORS} WHERE user_id = $1`, [userId]);
      await m.query(`DELETE FROM ${CODES} WHERE user_id = $1`, [userId]);
      return this.record(m, tenantId, userId, A.userMfaRemoved, { method: 'totp' }, meta);
    }));
    await this.outbox.sent(receipt);
    return { removed: true };
  }

  /**
   * An administrator removes a user's second factor (confirmed or pending) and its recovery codes,
   * for a user who lost their authenticator. Whoever does it must hold every permission the user
   * holds (as for a password reset), and nobody resets their own (that is removal, with a current
   * code). Every session of the user ends in the same transaction: whoever held them may be the
   * one who enrolled a factor the owner does not control. One `auth.user.mfa_reset` event, with
   * the administrator as its actor.
   */
  @MessagePattern(authRpc.resetMfa.subject)
  async reset(body: unknown): Promise<{ reset: true; sessionsRevoked: number; position: number }> {
    const { meta, payload } = parseOrThrow(requests.reset, body, 'MFA reset');
    const { tenantId, userId } = payload;
    const authority = await this.users.overUser(meta, tenantId, userId);
    if (authority.self) {
      throw new KeelError('forbidden', 'Nobody resets their own second factor: remove it with a current code (DELETE /api/v1/auth/mfa/totp), or ask another administrator.');
    }
    const { state } = await this.users.load(tenantId, userId);
    if (state.status !== 'none') mayActOn(state, authority);
    const done = await inTenant(this.ds, tenantId, async (m) => {
      const [removed]: [unknown[], number] = await m.query(`DELETE FROM ${FACTORS} WHERE user_id = $1 AND tenant_id = $2 RETURNING user_id`, [userId, tenantId]);
      if (!removed.length) throw new KeelError('not_found', 'This user has no second factor, enrolled or pending.');
      await m.query(`DELETE FROM ${CODES} WHERE user_id = $1`, [userId]);
      const revoked = await this.revoker.revokeUserIn(m, tenantId, userId, 'mfa_reset', meta);
      const receipt = await this.record(m, tenantId, userId, A.userMfaReset, { method: 'totp', sessionsRevoked: revoked.ids.length }, meta);
      return { revoked, receipt };
    });
    await this.revoker.settle(done.revoked);
    const { position } = await this.outbox.sent(done.receipt);
    return { reset: true, sessionsRevoked: done.revoked.ids.length, position };
  }

  /**
   * The second factor of a sign-in whose password was right. A TOTP code is accepted once:
   * its step is recorded with a conditional update, so two sign-ins racing with one code
   * cannot both pass. A recovery code is spent in the same transaction as its event.
   */
  async atSignIn(tenantId: string, userId: string, presented: { totp?: string; recoveryCode?: string }, meta: CommandMeta): Promise<SecondFactor> {
    const [factor] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT secret_enc, last_used_step FROM ${FACTORS} WHERE user_id = $1 AND tenant_id = $2 AND confirmed_at IS NOT NULL`,
      [userId, tenantId],
    );
    if (!factor) return 'not_enrolled';
    if (presented.totp) {
      const step = verifyTotp(this.secretOf(userId, factor.secret_enc), presented.totp, Date.now(), stepOf(factor.last_used_step));
      if (step === null) return 'refused';
      const [claimed] = await tenantQuery(
        this.ds,
        tenantId,
        `UPDATE ${FACTORS} SET last_used_step = $2 WHERE user_id = $1 AND (last_used_step IS NULL OR last_used_step < $2) RETURNING user_id`,
        [userId, step],
      );
      return claimed.length ? 'passed' : 'refused';
    }
    if (presented.recoveryCode) return (await this.spendRecoveryCode(tenantId, userId, presented.recoveryCode, meta)) ? 'passed' : 'refused';
    return 'missing';
  }

  private async spendRecoveryCode(tenantId: string, userId: string, code: string, meta: CommandMeta): Promise<boolean> {
    const receipt = await inTenant(this.ds, tenantId, async (m) => {
      const [spent] = await m.query(
        `UPDATE ${CODES} SET used_at = now() WHERE user_id = $1 AND tenant_id = $2 AND code_hash = $3 AND used_at IS NULL RETURNING user_id`,
        [userId, tenantId, recoveryCodeHash(code)],
      );
      if (!spent.length) return null;
      const [{ n }] = await m.query(`SELECT count(*)::int AS n FROM ${CODES} WHERE user_id = $1 AND used_at IS NULL`, [userId]);
      return this.record(m, tenantId, userId, A.userRecoveryCodeUsed, { remaining: n }, meta);
    });
    if (!receipt) return false;
    await this.outbox.sent(receipt);
    return true;
  }
}

/** Postgres answers bigint as text. */
function stepOf(value: string | null): number | null {
  return value === null ? null : Number(value);
}
