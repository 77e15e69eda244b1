import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { z } from 'zod';
import { authRpc, KeelError, parseOrThrow, SubjectRef } from '@keel/contracts';
import { inTenant, tenantQuery } from '@keel/database';
import { announceErasure, MESSAGING, Messaging, MessagePattern, PersonalData, WrappedSubjectKey } from '@keel/messaging';
import { toInfo } from '../api-keys/api-keys.service';
import { AUTH_SCHEMA } from '../database/schema';
import { sessionInfo } from '../sessions/sessions.service';
import { SessionRevoker } from '../sessions/session-revoker';
import { UsersService } from '../users/users.service';
import { SubjectKeyStore } from './subject-keys';

const S = `"${AUTH_SCHEMA}"`;
const requests = {
  keys: authRpc.subjectKeys.request,
  erase: authRpc.eraseUser.request,
  export: authRpc.personalData.request,
};

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
   * and for someone holding more than the caller), then in one transaction: their data key is
   * destroyed (a tombstone stays, so no new key is ever made for them), their password, second
   * factor, recovery codes and SSO links deleted, their sessions revoked and deleted, their email
   * freed. The erasure event stands for those deletions in the log. Every process is told to drop
   * the key at once; gateways refuse the person's tokens (the event, and Redis). A retry after a
   * failure finishes the work and records nothing twice.
   */
  @MessagePattern(authRpc.eraseUser.subject)
  async erase(body: unknown): Promise<Erased> {
    const { meta, payload } = parseOrThrow(requests.erase, body, 'erasure');
    const { tenantId, userId } = payload;
    const authority = await this.users.overUser(meta, tenantId, userId);
    const decided = await this.users.run(tenantId, userId, { type: 'erase', data: {}, authority }, meta);
    const ref: SubjectRef = { tenantId, subjectId: userId };
    let revoked;
    let refs: SubjectRef[] = [ref];
    try {
      revoked = await inTenant(this.ds, tenantId, async (m) => {
        // The person's key, and those of the API keys they made (what those keys did is sealed under them).
        const made: { id: string }[] = await m.query(`SELECT id FROM ${S}.api_keys WHERE tenant_id = $1 AND created_by = $2::text AND created_by_kind = 'user'`, [tenantId, userId]);
        refs = [ref, ...made.map((k) => ({ tenantId, subjectId: k.id }))];
        for (const r of refs) await this.keys.erase(m, r);
        const sessions = await this.revoker.revokeUserIn(m, tenantId, userId, 'user_erased', meta);
        for (const table of ['credentials', 'email_reservations', 'mfa_factors', 'recovery_codes', 'external_identities', 'sessions']) {
          await m.query(`DELETE FROM ${S}.${table} WHERE tenant_id = $1 AND user_id = $2`, [tenantId, userId]);
        }
        return sessions;
      });
    } catch (error) {
      throw new KeelError('service_unavailable', `The erasure is recorded but not finished (${(error as Error).message}); send it again to finish it.`);
    }
    for (const r of refs) {
      this.personalData.erased(r);
      announceErasure(this.m, r);
    }
    await this.users.accessChanged([{ user: userId }]);
    await this.revoker.settle(revoked);
    return { erased: true, userId, sessionsRevoked: revoked.ids.length, position: decided.position };
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
      q(`SELECT * FROM ${S}.api_keys WHERE tenant_id = $1 AND created_by = $2::text ORDER BY created_at`),
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
