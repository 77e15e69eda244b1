import { Inject, Injectable } from '@nestjs/common';
import { DataSource, EntityManager } from 'typeorm';
import { z } from 'zod';
import { authRpc, CommandMeta, KeelError, parseOrThrow, SubjectRef } from '@keel/contracts';
import { inTenant, tenantQuery } from '@keel/database';
import { announceErasure, MESSAGING, Messaging, MessagePattern, PersonalData, WrappedSubjectKey } from '@keel/messaging';
import { toInfo } from '../api-keys/api-keys.service';
import { AUTH_SCHEMA, CROSS_TENANT_DS } from '../database/schema';
import { sessionInfo } from '../sessions/sessions.service';
import { Revoked, SessionRevoker } from '../sessions/session-revoker';
import { UsersService } from '../users/users.service';
import { SubjectKeyStore } from './subject-keys';

const S = `"${AUTH_SCHEMA}"`;
const requests = {
  keys: authRpc.subjectKeys.request,
  erase: authRpc.eraseUser.request,
  export: authRpc.personalData.request,
};

/** What an erasure's cleanup did: the subjects whose keys it destroyed, the sessions it revoked. */
export interface Cleanup {
  userId: string;
  refs: SubjectRef[];
  revoked: Revoked;
}

type Erased = z.output<typeof authRpc.eraseUser.response>;
type Export = z.output<typeof authRpc.personalData.response>;

const iso = (v: unknown) => (v as Date).toISOString();

/**
 * Personal data (issue 7): the owner of the data keys (every service seals and opens with them,
 * see PersonalData in libs/messaging), a person's export (Art. 15 and 20) and their erasure
 * (Art. 17). The ledger's part of the export is the audit service's (`qry.audit.subject_entries`);
 * the gateway joins the two.
 */
@Injectable()
export class PersonalDataService {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(CROSS_TENANT_DS) private readonly crossTenant: DataSource,
    private readonly keys: SubjectKeyStore,
    private readonly users: UsersService,
    private readonly revoker: SessionRevoker,
    private readonly personalData: PersonalData,
    @Inject(MESSAGING) private readonly m: Messaging,
  ) {}

  /** Data keys for another service, sealed under the KEK (it unwraps them with its own KEEL_KEK). */
  @MessagePattern(authRpc.subjectKeys.subject)
  async subjectKeys(body: unknown): Promise<{ keys: WrappedSubjectKey[] }> {
    const q = parseOrThrow(requests.keys, body, 'subject keys');
    return { keys: await this.keys.wrapped(q.refs, q.create) };
  }

  /**
   * Erases a person. The decision first (`auth.user.erased`, no personal data; refused for oneself
   * and for someone holding more than the caller), then the cleanup in one transaction (`cleanUp`).
   * The erasure event stands for those deletions in the log, and the erasures projection applies
   * the same cleanup from it: a crash between the two is finished from the log, and a key store
   * restored from a backup forgets again whoever was erased after it. Every process is told to drop
   * the keys at once; gateways refuse the person's tokens (the event, and Redis). A retry records
   * nothing twice.
   */
  @MessagePattern(authRpc.eraseUser.subject)
  async erase(body: unknown): Promise<Erased> {
    const { meta, payload } = parseOrThrow(requests.erase, body, 'erasure');
    const { tenantId, userId } = payload;
    const authority = await this.users.overUser(meta, tenantId, userId);
    // The sessions the erasure ends, counted before its event: the erasures projection may revoke
    // them first, from the event, while this cleanup waits for its locks.
    const [{ n: active }] = await tenantQuery(
      this.ds, tenantId, `SELECT count(*)::int AS n FROM ${S}.sessions WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL`, [tenantId, userId],
    );
    const decided = await this.users.run(tenantId, userId, { type: 'erase', data: {}, authority }, meta);
    let done: Cleanup;
    try {
      done = await inTenant(this.ds, tenantId, (m) => this.cleanUp(m, tenantId, userId, meta));
    } catch (error) {
      // The erasures projection finishes it from the event in any case; a retry finishes it now.
      throw new KeelError('service_unavailable', `The erasure is recorded but not finished (${(error as Error).message}); send it again to finish it now.`);
    }
    await this.settle(done);
    return { erased: true, userId, sessionsRevoked: Math.max(active, done.revoked.ids.length), position: decided.position };
  }

  /**
   * Inside the caller's transaction, idempotent: the person's data key and their API keys' are
   * destroyed (tombstones stay), their credentials, second factor, recovery codes, SSO links and
   * email reservation deleted, their sessions revoked (events through the outbox) and deleted.
   */
  async cleanUp(m: EntityManager, tenantId: string, userId: string, meta: CommandMeta): Promise<Cleanup> {
    // The keys they made in any tenant (a platform administrator makes keys in others), read across tenants.
    const made: { tenant_id: string; id: string }[] = await this.crossTenant.query(
      `SELECT tenant_id, id FROM ${S}.api_keys WHERE created_by_tenant = $1 AND created_by = $2::text AND created_by_kind = 'user'`,
      [tenantId, userId],
    );
    const refs: SubjectRef[] = [{ tenantId, subjectId: userId }, ...made.map((k) => ({ tenantId: k.tenant_id, subjectId: k.id }))];
    await this.keys.erase(m, refs);
    const revoked = await this.revoker.revokeUserIn(m, tenantId, userId, 'user_erased', meta);
    for (const table of ['credentials', 'email_reservations', 'mfa_factors', 'recovery_codes', 'external_identities', 'sessions']) {
      await m.query(`DELETE FROM ${S}.${table} WHERE tenant_id = $1 AND user_id = $2`, [tenantId, userId]);
    }
    return { userId, refs, revoked };
  }

  /** After the cleanup committed: every process drops the keys at once, gateways refuse the person's tokens and sessions. */
  async settle(done: Cleanup): Promise<void> {
    for (const r of done.refs) {
      this.personalData.forget(r);
      announceErasure(this.m, r);
    }
    await this.users.accessChanged([{ user: done.userId }]);
    await this.revoker.settle(done.revoked);
  }

  /** Everything the auth service holds about a person, decrypted (the ledger's entries are added by the gateway). */
  @MessagePattern(authRpc.personalData.subject)
  async export(body: unknown): Promise<Export> {
    const { tenantId, userId } = parseOrThrow(requests.export, body, 'personal data export');
    const user = await this.users.get({ tenantId, userId });
    const q = (sql: string) => tenantQuery(this.ds, tenantId, sql, [tenantId, userId]);
    const [sessions, grants, factor, codes, links, keys] = await Promise.all([
      q(`SELECT * FROM ${S}.sessions WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at`),
      q(`SELECT id, user_id, role, team_id FROM ${S}.role_assignments WHERE tenant_id = $1 AND user_id = $2 ORDER BY id`),
      q(`SELECT confirmed_at FROM ${S}.mfa_factors WHERE tenant_id = $1 AND user_id = $2`),
      q(`SELECT count(*)::int AS n FROM ${S}.recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL`),
      q(`SELECT e.provider_id, p.name AS provider_name, e.subject, e.created_at, e.last_sign_in_at FROM ${S}.external_identities e
         LEFT JOIN ${S}.identity_providers p ON p.id = e.provider_id WHERE e.tenant_id = $1 AND e.user_id = $2 ORDER BY e.created_at`),
      this.crossTenant.query(`SELECT * FROM ${S}.api_keys WHERE created_by_tenant = $1 AND created_by = $2::text AND created_by_kind = 'user' ORDER BY created_at`, [tenantId, userId]),
    ]);
    return {
      exportedAt: new Date().toISOString(),
      subject: { tenantId, userId },
      user,
      sessions: sessions.map(sessionInfo),
      roleAssignments: grants.map((r: Record<string, unknown>) => ({ id: r.id as string, userId: r.user_id as string, role: r.role as string, teamId: (r.team_id as string) ?? null })),
      mfa: { totp: factor[0] ? (factor[0].confirmed_at ? 'confirmed' : 'pending') : 'none', recoveryCodesLeft: codes[0]?.n ?? 0 },
      externalIdentities: links.map((r: Record<string, unknown>) => ({
        providerId: r.provider_id as string, providerName: (r.provider_name as string) ?? null, subject: r.subject as string,
        linkedAt: iso(r.created_at), lastSignInAt: iso(r.last_sign_in_at),
      })),
      apiKeys: keys.map(toInfo),
    };
  }
}
