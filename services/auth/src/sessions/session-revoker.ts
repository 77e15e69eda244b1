import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { ACCESS_TOKEN_SECONDS, authEventTypes as A, CommandMeta, revokedSessionKey } from '@keel/contracts';
import { tenantQuery } from '@keel/database';
import { AUTH_SCHEMA } from '../database/schema';
import { EventLog } from '../event-log';

const SESSIONS = `"${AUTH_SCHEMA}".sessions`;

/** Revokes sessions and records each revocation as an event (gateways drop their tokens on it). */
@Injectable()
export class SessionRevoker {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly log: EventLog,
    private readonly redis: Redis,
    @Inject('KEEL_AUTH_CONFIG') private readonly config: KeelConfig,
  ) {}

  private async record(rows: { id: string; tenant_id: string }[], reason: string, meta: CommandMeta): Promise<number> {
    let position = 0;
    // Gateways hear the event at once; one that was away (or starts later) finds the
    // revocation here, for as long as the session's access tokens can live.
    if (rows.length) {
      const p = this.redis.pipeline();
      for (const r of rows) p.set(revokedSessionKey(this.config.KEEL_REDIS_PREFIX, r.id), reason, 'EX', ACCESS_TOKEN_SECONDS + 60);
      await p.exec();
    }
    for (const r of rows) {
      const recorded = await this.log.record('session', { tenantId: r.tenant_id, aggregateId: r.id }, { type: A.sessionRevoked, data: { reason } }, meta);
      position = Math.max(position, recorded.position);
    }
    return position;
  }

  async revokeUser(tenantId: string, userId: string, reason: string, meta: CommandMeta): Promise<number> {
    const [rows] = await tenantQuery(
      this.ds,
      tenantId,
      `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = $3 WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING id, tenant_id`,
      [tenantId, userId, reason],
    );
    return this.record(rows, reason, meta);
  }

  /** Revokes one session; `userId` restricts it to that user's own sessions. Returns false when there was none. */
  async revokeOne(tenantId: string, sessionId: string, reason: string, meta: CommandMeta, userId?: string): Promise<boolean> {
    const [rows] = await tenantQuery(
      this.ds,
      tenantId,
      `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = $3
       WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL ${userId ? 'AND user_id = $4' : ''} RETURNING id, tenant_id`,
      userId ? [tenantId, sessionId, reason, userId] : [tenantId, sessionId, reason],
    );
    await this.record(rows, reason, meta);
    return rows.length > 0;
  }

  /** Keeps the newest `keep` active sessions of a user and revokes the rest. */
  async keepNewest(tenantId: string, userId: string, keep: number, meta: CommandMeta): Promise<void> {
    const [rows] = await tenantQuery(
      this.ds,
      tenantId,
      `UPDATE ${SESSIONS} SET revoked_at = now(), revoked_reason = 'max_concurrent_sessions'
       WHERE id IN (SELECT id FROM ${SESSIONS} WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL
                    ORDER BY created_at DESC OFFSET $3)
       RETURNING id, tenant_id`,
      [tenantId, userId, keep],
    );
    await this.record(rows, 'max_concurrent_sessions', meta);
  }
}
