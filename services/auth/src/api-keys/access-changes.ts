import Redis from 'ioredis';
import { ACCESS_TOKEN_SECONDS, roleChangedKey, userChangedKey } from '@keel/contracts';

/** What changed: a user's access (roles, a tenant-scope grant, disabled or erased), or a tenant's custom role. */
export type AccessChange = { user: string } | { tenantId: string; role: string };

/**
 * Writes access changes to Redis (the time, ms since epoch), after their events are on the log,
 * for as long as an access token issued before can live. Gateways hear the events themselves and
 * refuse tokens issued before; Redis is for a gateway that did not (it was away, or started
 * later), as for session revocations. Best effort: with Redis away the pushed events still apply.
 */
export async function recordAccessChanges(redis: Redis | undefined, prefix: string, changes: AccessChange[]): Promise<void> {
  if (!redis || !changes.length) return;
  const at = String(Date.now());
  const p = redis.pipeline();
  for (const c of changes) p.set('user' in c ? userChangedKey(prefix, c.user) : roleChangedKey(prefix, c.tenantId, c.role), at, 'EX', ACCESS_TOKEN_SECONDS + 60);
  await p.exec().catch(() => undefined);
}
