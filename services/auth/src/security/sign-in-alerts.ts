import { Inject, Injectable } from '@nestjs/common';
import Redis from 'ioredis';
import { Counter } from 'prom-client';
import { KeelConfig } from '@keel/config';
import {
  authEventTypes as A,
  DEFAULT_FAILED_SIGN_IN_ALERT_THRESHOLD,
  EventEnvelope,
  nameBasedUuid,
  securityEventTypes,
} from '@keel/contracts';
import { EventPattern, EventStore, KEEL_CONFIG, KEEL_LOGGER, Payload, RetryLaterError } from '@keel/messaging';
import { Logger, metricsRegistry, withTimeout } from '@keel/observability';
import { TenantLookup } from '../users/tenant-lookup';

/** The window the rule counts in. */
export const ALERT_WINDOW_MS = 60_000;
/** Failures older than this when they reach the rule are history (a new consumer reading the log from its start), not an attack now. */
export const STALE_AFTER_MS = 5 * ALERT_WINDOW_MS;
const REDIS_TIMEOUT_MS = 1_000;
/** How long a window's count and its alert mark are kept: past the oldest failure still counted, so a late one neither starts a fresh count nor raises the alert again. */
const KEEP_MS = STALE_AFTER_MS + 2 * ALERT_WINDOW_MS;

/**
 * One step on Redis: nothing more is counted once the window's alert is raised (an attack does not
 * grow the set); a failure of an account is counted by its event id (a redelivery counts once), one
 * of an unknown email by a counter (its id would be random: nothing to deduplicate). Answers the
 * window's failures, or -1 when its alert is already raised.
 */
const COUNT_LUA = `
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if ARGV[1] == '' then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SCARD', KEYS[1]) + tonumber(redis.call('GET', KEYS[2]) or '0')
`;

const raised = new Counter({
  name: 'keel_security_alerts_raised_total',
  help: 'security.alert.raised events published, by rule',
  labelNames: ['rule'],
  registers: [metricsRegistry],
});

/**
 * The failed sign-ins rule: when a tenant's failed sign-ins in one minute pass the tenant's
 * `failedSignInAlertThreshold`, one `security.alert.raised` is published for that tenant and
 * minute. A failure charged to an account is an `auth.user.login_failed` on the log, heard here; a
 * failure for an email the tenant does not have (credential stuffing) has no log to be on, so
 * sign-in counts it here directly (`countUnknownAccount`), and both count in the same window.
 *
 * A durable consumer of the user events, so a restart or a second replica neither misses nor
 * doubles anything: each failure is counted by its event id (a Redis set per tenant and minute,
 * so a redelivery counts once), the window comes from the event's own time, and the alert's id
 * is derived from (rule, tenant, minute), so publishing it again after a crash is stored once.
 * Redis away: the events wait (RetryLaterError) and are counted when it is back.
 */
@Injectable()
export class SignInAlerts {
  constructor(
    private readonly store: EventStore,
    @Inject(KEEL_CONFIG) private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
    private readonly redis: Redis,
    private readonly tenants: TenantLookup,
  ) {}

  @EventPattern('evt.*.auth.user.*', { durable: 'auth-sign-in-alerts' })
  async onUserEvent(@Payload() event: EventEnvelope): Promise<void> {
    if (event.type !== A.userLoginFailed) return;
    const at = Date.parse(event.occurredAt);
    if (!Number.isFinite(at) || Date.now() - at > STALE_AFTER_MS) return;
    try {
      await this.count(event.tenantId, event.id, at, event.correlationId, event.id);
    } catch (error) {
      if (error instanceof RedisUnavailable) throw new RetryLaterError(error.message);
      throw error;
    }
  }

  /** A failed sign-in for an email the tenant does not have, counted at once (best effort: it has no event to be redelivered). */
  async countUnknownAccount(tenantId: string, correlationId: string): Promise<void> {
    await this.count(tenantId, '', Date.now(), correlationId);
  }

  /** `failureId` is the event's id, or '' for a failure with no event (an unknown email). */
  private async count(tenantId: string, failureId: string, at: number, correlationId: string, causationId?: string): Promise<void> {
    const windowStart = Math.floor(at / ALERT_WINDOW_MS) * ALERT_WINDOW_MS;
    const base = `${this.config.KEEL_REDIS_PREFIX}security:failed_sign_ins:${tenantId}:${windowStart}`;
    let observed: number;
    try {
      observed = Number(
        await withTimeout(this.redis.eval(COUNT_LUA, 3, base, `${base}:unknown`, `${base}:alerted`, failureId, KEEP_MS), REDIS_TIMEOUT_MS, 'counting a failed sign-in'),
      );
    } catch (error) {
      throw new RedisUnavailable(`Redis cannot count failed sign-ins now: ${(error as Error).message}`);
    }
    if (observed < 0) return;
    const tenant = await this.tenants.find(tenantId);
    if (!tenant) return;
    const threshold = tenant.settings.failedSignInAlertThreshold ?? DEFAULT_FAILED_SIGN_IN_ALERT_THRESHOLD;
    if (observed <= threshold) return;

    const id = nameBasedUuid(`security.alert.raised|failed_sign_ins|${tenantId}|${windowStart}`);
    const alert: EventEnvelope = {
      id,
      type: securityEventTypes.alertRaised,
      schemaVersion: 1,
      tenantId,
      aggregateType: 'alert',
      aggregateId: id,
      aggregateVersion: 1,
      occurredAt: new Date().toISOString(),
      actor: { kind: 'service', id: 'auth' },
      correlationId,
      ...(causationId ? { causationId } : {}),
      data: { rule: 'failed_sign_ins', windowStart: new Date(windowStart).toISOString(), windowSeconds: ALERT_WINDOW_MS / 1_000, threshold, observed },
    };
    // Published before it is marked: a crash in between publishes it again, and the log keeps one (its id).
    await this.store.appendFacts([alert]);
    await withTimeout(this.redis.set(`${base}:alerted`, '1', 'PX', KEEP_MS), REDIS_TIMEOUT_MS, 'marking the alert').catch(() => undefined);
    raised.inc({ rule: 'failed_sign_ins' });
    this.logger.warn({ tenantId, windowStart: alert.data.windowStart, threshold, observed }, 'security alert: failed sign-ins passed the threshold');
  }
}

class RedisUnavailable extends Error {}
