import { Inject, Injectable } from '@nestjs/common';
import { DataSource, EntityManager } from 'typeorm';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { ACCESS_TOKEN_SECONDS, authEventTypes as A, CommandMeta, revokedSessionKey } from '@keel/contracts';
import { inTenant } from '@keel/database';
import { Outbox, OutboxEvent, OutboxReceipt } from '@keel/event-sourcing';
import { AUTH_SCHEMA } from '../database/schema';

const SESSIONS = `"${AUTH_SCHEMA}".sessions`;

interface RevokedRow {
  id: string;
  tenant_id: string;
  version: number;
}

/** What a revocation inside a transaction did: the sessions, and their events (already in the outbox). */
export interface Revoked {
  ids: string[];
  reason: string;
  receipt: OutboxReceipt;
}

/**
 * Revokes sessions. Each revocation is an event (gateways drop the session's tokens on it) that
 * commits with the row through the outbox; Redis also keeps the revocation for as long as the
 * session's access tokens can live, for a gateway that was away when the event went by.
 */
@Injectable()
export class SessionRevoker {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly outbox: Outbox,
    private readonly redis: Redis,
    @Inject('KEEL_AUTH_CONFIG') private readonly config: KeelConfig,
  ) {}

  private async revokeIn(m: EntityManager, sql: string, params: unknown[], reason: string, meta: CommandMeta): Promise<Revoked> {
    const [rows]: [RevokedRow[], number] = await m.query(sql, params);
    const events: OutboxEvent[] = rows.map((r) => ({
      tenantId: r.tenant_id, aggregateType: 'session', aggregateId: r.id, version: r.version, type: A.sessionRevoked, data: { reason },
    }));
    return { ids: rows.map((r) => r.id), reason, receipt: await this.outbox.record(m, events, meta) };
  }

  /** After the commit: Redis learns the revocations, then the events reach the log. Answers the last position. */
  async settle(revoked: Revoked): Promise<number> {
    if (revoked.ids.length) {
      const p = this.redis.pipeline();
      for (const id of revoked.ids) p.set(revokedSessionKey(this.config.KEEL_REDIS_PREFIX, id), revoked.reason, 'EX', ACCESS_TOKEN_SECONDS + 60);
      await p.exec();
    }
    return (await this.outbox.sent(revoked.receipt)).position;
  }

  async revokeUser(tenantId: string, userId: string, reason: string, meta: CommandMeta): Promise<number> {
    const revoked = await inTenant(this.ds, tenantId, (m) => this.revokeUserIn(m, tenantId, userId, reason, meta));
    return this.settle(revoked);
  }

  /** Inside the caller's transaction: revokes every active session of a user (`settle` after the commit). */
  revokeUserIn(m: EntityManager, tenantId: string, userId: string, reason: string, meta: CommandMeta): Promise<Revoked> {
    return this.revokeIn(
      m,
      `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = $3, version = version + 1
       WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING id, tenant_id, version`,
      [tenantId, userId, reason],
      reason,
      meta,
    );
  }

  /** Revokes one session; `userId` restricts it to that user's own sessions. Returns false when there was none. */
  async revokeOne(tenantId: string, sessionId: string, reason: string, meta: CommandMeta, userId?: string): Promise<boolean> {
    const revoked = await inTenant(this.ds, tenantId, (m) =>
      this.revokeIn(
        m,
        `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = $3, version = version + 1
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL ${userId ? 'AND user_id = $4' : ''} RETURNING id, tenant_id, version`,
        userId ? [tenantId, sessionId, reason, userId] : [tenantId, sessionId, reason],
        reason,
        meta,
      ),
    );
    await this.settle(revoked);
    return revoked.ids.length > 0;
  }

  /** Inside the transaction that starts a session: keeps the newest `keep` active sessions of a user and revokes the rest. */
  keepNewestIn(m: EntityManager, tenantId: string, userId: string, keep: number, meta: CommandMeta): Promise<Revoked> {
    return this.revokeIn(
      m,
      `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = 'max_concurrent_sessions', version = version + 1
       WHERE id IN (SELECT id FROM ${SESSIONS} WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL
                    ORDER BY created_at DESC, id DESC OFFSET $3)
       RETURNING id, tenant_id, version`,
      [tenantId, userId, keep],
      'max_concurrent_sessions',
      meta,
    );
  }
}
