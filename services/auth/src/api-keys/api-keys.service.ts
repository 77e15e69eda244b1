import { Inject, Injectable } from '@nestjs/common';
import { timingSafeEqual } from 'node:crypto';
import { DataSource } from 'typeorm';
import {
  ApiKeyInfo,
  apiKeyMaxLifetimeDaysOf,
  authEventTypes as A,
  authRpc,
  CurrentAccess,
  KeelError,
  newEventId,
  parseOrThrow,
  storableText,
  textProblem,
  VerifiedApiKey,
} from '@keel/contracts';
import { randomToken, sha256Hex } from '@keel/crypto';
import { ALL_TENANTS, inTenant, tenantQuery } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { KEEL_LOGGER, MessagePattern } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { AUTH_SCHEMA } from '../database/schema';
import { TenantLookup } from '../users/tenant-lookup';
import { UsersService } from '../users/users.service';

const KEYS = `"${AUTH_SCHEMA}".api_keys`;
// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  create: authRpc.createApiKey.request,
  rotate: authRpc.rotateApiKey.request,
  revoke: authRpc.revokeApiKey.request,
  list: authRpc.apiKeys.request,
  verify: authRpc.verifyApiKey.request,
  access: authRpc.currentAccess.request,
};

/** `keel_<id without dashes>_<secret>`: the id finds the row, the whole string is the secret. */
const SECRET = /^keel_([0-9a-f]{32})_[A-Za-z0-9_-]{32,}$/;
const DAY_MS = 86_400_000;
/** A client's clock may run a little ahead of ours: an expiry this much past the maximum still passes. */
const EXPIRY_SLACK_MS = 60_000;
/** A key's last use is written at most this often (one row update and one `auth.api_key.used` event). */
export const LAST_USED_EVERY_MS = 60_000;

type Row = Record<string, unknown>;

/** An API key's row as its answers show it (never its secret). */
export function toInfo(r: Row): ApiKeyInfo {
  const iso = (v: unknown) => (v ? (v as Date).toISOString() : null);
  return {
    id: r.id as string, tenantId: r.tenant_id as string, name: r.name as string, permissions: r.permissions as string[],
    expiresAt: (r.expires_at as Date).toISOString(), createdBy: r.created_by as string, createdAt: (r.created_at as Date).toISOString(),
    revokedAt: iso(r.revoked_at), lastUsedAt: iso(r.last_used_at), rotatedAt: iso(r.rotated_at),
  };
}

const sameHash = (stored: unknown, presented: string) => typeof stored === 'string' && stored.length === presented.length && timingSafeEqual(Buffer.from(stored), Buffer.from(presented));

/**
 * API keys. A key acts with at most its creator's current permissions: its own permissions
 * (chosen at creation, within what the creator held then) intersected with what the creator
 * holds now, looked up from the creator's log at every verification. A disabled or erased
 * creator's keys stop working; a demoted creator's keys lose what the creator lost. Keys made by
 * the operator (a system principal, who cannot be demoted) keep their own permissions.
 */
@Injectable()
export class ApiKeysService {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly outbox: Outbox,
    private readonly users: UsersService,
    private readonly tenants: TenantLookup,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {}

  @MessagePattern(authRpc.createApiKey.subject)
  async create(body: unknown): Promise<ApiKeyInfo & { secret: string; position: number }> {
    const { meta, payload } = parseOrThrow(requests.create, body, 'API key');
    const { name, permissions } = payload.data;
    // A key made by a key would follow a key, not a person: keys are made by people (or the operator).
    if (meta.actor.kind === 'api_key') throw new KeelError('forbidden', 'An API key cannot create API keys; sign in as a user to create one.');
    const tenant = await this.tenants.find(payload.tenantId);
    if (!tenant) throw new KeelError('not_found', 'No such tenant.');
    const maxDays = apiKeyMaxLifetimeDaysOf(tenant.settings);
    const latest = Date.now() + maxDays * DAY_MS;
    const expiresAt = payload.data.expiresAt ?? new Date(latest).toISOString();
    const expiry = new Date(expiresAt).getTime();
    if (expiry <= Date.now()) {
      throw new KeelError('validation_failed', 'expiresAt must be in the future.', [{ field: 'expiresAt', message: 'must be in the future' }]);
    }
    if (expiry > latest + EXPIRY_SLACK_MS) {
      const message = `must be at most ${maxDays} days from now (the tenant's apiKeyMaxLifetimeDays); omit it to get that maximum`;
      throw new KeelError('validation_failed', `expiresAt ${message}.`, [{ field: 'expiresAt', message }]);
    }
    if (meta.permissions !== '*') {
      const held = new Set(meta.permissions);
      const missing = permissions.filter((p) => !held.has(p));
      if (missing.length) throw new KeelError('forbidden', `An API key cannot hold permissions its creator lacks: ${missing.join(', ')}.`);
    }
    const id = newEventId();
    const secret = `keel_${id.replace(/-/g, '')}_${randomToken(32)}`;
    // The key and its event commit together: no key exists that the log will not know.
    const { row, receipt } = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [inserted] = await m.query(
        `INSERT INTO ${KEYS} (id, tenant_id, name, secret_hash, permissions, expires_at, created_by, created_by_kind, created_by_tenant, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1) RETURNING *`,
        [id, payload.tenantId, name, sha256Hex(secret), [...new Set(permissions)], expiresAt, meta.actor.id, meta.actor.kind, meta.actor.tenantId ?? payload.tenantId],
      );
      const event = { tenantId: payload.tenantId, aggregateType: 'api_key', aggregateId: id, version: 1, type: A.apiKeyCreated, data: { name, permissions, expiresAt } };
      return { row: inserted, receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { ...toInfo(row), secret, position };
  }

  /**
   * A new secret for the key; the old one ends now, or when the grace period is over. Whoever
   * rotates learns a secret that acts with the key's permissions, so they must hold them all.
   */
  @MessagePattern(authRpc.rotateApiKey.subject)
  async rotate(body: unknown): Promise<ApiKeyInfo & { secret: string; position: number; previousSecretValidUntil: string }> {
    const { meta, payload } = parseOrThrow(requests.rotate, body, 'API key rotation');
    const grace = payload.data.gracePeriodSeconds;
    const secret = `keel_${payload.keyId.replace(/-/g, '')}_${randomToken(32)}`;
    const { row, receipt, validUntil } = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [current] = await m.query(`SELECT * FROM ${KEYS} WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL FOR UPDATE`, [payload.keyId, payload.tenantId]);
      if (!current) throw new KeelError('not_found', 'No such active API key in this tenant.');
      if ((current.expires_at as Date).getTime() <= Date.now()) throw new KeelError('conflict', 'This API key has expired; create a new one.');
      if (meta.permissions !== '*') {
        const held = new Set(meta.permissions);
        const missing = (current.permissions as string[]).filter((p) => !held.has(p));
        if (missing.length) throw new KeelError('forbidden', `Rotating an API key gives you its secret: you must hold all of its permissions (you lack ${missing.join(', ')}).`);
      }
      const validUntil = new Date(Math.min(Date.now() + grace * 1000, (current.expires_at as Date).getTime()));
      const [rows] = await m.query(
        `UPDATE ${KEYS} SET secret_hash = $2, previous_secret_hash = CASE WHEN $3::int > 0 THEN secret_hash END, previous_secret_valid_until = CASE WHEN $3::int > 0 THEN $4::timestamptz END,
                rotated_at = now(), version = version + 1
         WHERE id = $1 RETURNING *`,
        [payload.keyId, sha256Hex(secret), grace, validUntil.toISOString()],
      );
      const event = {
        tenantId: payload.tenantId, aggregateType: 'api_key', aggregateId: payload.keyId, version: rows[0].version, type: A.apiKeyRotated,
        data: { previousSecretValidUntil: validUntil.toISOString() },
      };
      return { row: rows[0], receipt: await this.outbox.record(m, [event], meta), validUntil };
    });
    const { position } = await this.outbox.sent(receipt);
    return { ...toInfo(row), secret, position, previousSecretValidUntil: validUntil.toISOString() };
  }

  @MessagePattern(authRpc.revokeApiKey.subject)
  async revoke(body: unknown): Promise<ApiKeyInfo & { position: number }> {
    const { meta, payload } = parseOrThrow(requests.revoke, body, 'API key revocation');
    const { row, receipt } = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [rows] = await m.query(
        `UPDATE ${KEYS} SET revoked_at = now(), previous_secret_hash = NULL, version = version + 1 WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING *`,
        [payload.keyId, payload.tenantId],
      );
      if (!rows.length) throw new KeelError('not_found', 'No such active API key in this tenant.');
      const event = { tenantId: payload.tenantId, aggregateType: 'api_key', aggregateId: payload.keyId, version: rows[0].version, type: A.apiKeyRevoked, data: {} };
      return { row: rows[0], receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { ...toInfo(row), position };
  }

  @MessagePattern(authRpc.apiKeys.subject)
  async list(body: unknown): Promise<{ items: ApiKeyInfo[] }> {
    const q = parseOrThrow(requests.list, body, 'API key listing');
    const rows = await tenantQuery(this.ds, q.tenantId, `SELECT * FROM ${KEYS} WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 500`, [q.tenantId]);
    return { items: rows.map(toInfo) };
  }

  /** For the gateway: who a presented key is, what it may do now and until when, or invalid_token. */
  @MessagePattern(authRpc.verifyApiKey.subject)
  async verify(body: unknown): Promise<VerifiedApiKey> {
    const invalid = new KeelError('invalid_token', 'The API key is not valid.');
    // A secret is a credential, not text: one holding a character the contract's text type refuses
    // (a control character, say) cannot be a key Keel issued, and is answered as any wrong key is
    // (401), not with a 400 describing it.
    const presented = (body as { secret?: unknown } | null)?.secret;
    if (typeof presented === 'string' && textProblem(presented)) {
      // Everything else (its length, other fields) is still refused as the contract says.
      parseOrThrow(requests.verify, { ...(body as object), secret: storableText(presented) }, 'API key');
      throw invalid;
    }
    const { secret } = parseOrThrow(requests.verify, body, 'API key');
    const m = SECRET.exec(secret);
    if (!m) throw invalid;
    const id = m[1]!.replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');
    // The key is the credential: it is found in any tenant.
    const [row] = await tenantQuery(this.ds, ALL_TENANTS, `SELECT * FROM ${KEYS} WHERE id = $1`, [id]);
    if (!row) throw invalid;
    const hash = sha256Hex(secret);
    const now = Date.now();
    const current = sameHash(row.secret_hash, hash);
    const previousUntil = row.previous_secret_valid_until ? (row.previous_secret_valid_until as Date).getTime() : 0;
    // A rotated key's previous secret, during its grace period.
    const previous = !current && previousUntil > now && sameHash(row.previous_secret_hash, hash);
    if (!current && !previous) throw invalid;
    if (row.revoked_at || (row.expires_at as Date).getTime() <= now) throw new KeelError('invalid_token', 'The API key is revoked or expired.');
    const effectivePermissions = await this.effectivePermissions(row);
    this.touch(row);
    const validUntil = previous ? Math.min(previousUntil, (row.expires_at as Date).getTime()) : (row.expires_at as Date).getTime();
    return { ...toInfo(row), effectivePermissions, validUntil: new Date(validUntil).toISOString() };
  }

  /** For the gateway: a user's status, tenant-scope roles and permissions now. */
  @MessagePattern(authRpc.currentAccess.subject)
  async currentAccess(body: unknown): Promise<CurrentAccess> {
    const q = parseOrThrow(requests.access, body, 'current access');
    return this.users.currentAccess(q.tenantId, q.userId);
  }

  /** The key's permissions that its creator still holds (all of them for a key made by the operator). */
  private async effectivePermissions(row: Row): Promise<string[]> {
    const own = row.permissions as string[];
    if (row.created_by_kind !== 'user') return own;
    const creator = await this.users.currentAccess(row.created_by_tenant as string, row.created_by as string);
    if (!creator.active) throw new KeelError('invalid_token', "The API key's creator is disabled or no longer exists; the key no longer works.");
    const held = new Set(creator.permissions);
    return own.filter((p) => held.has(p));
  }

  /**
   * Records the key's use, at most once a minute per key (one conditional update and its event,
   * `auth.api_key.used`, through the outbox), after the answer: a verification never waits on it.
   */
  private touch(row: Row): void {
    const last = row.last_used_at ? (row.last_used_at as Date).getTime() : 0;
    if (Date.now() - last < LAST_USED_EVERY_MS) return;
    const tenantId = row.tenant_id as string;
    const id = row.id as string;
    void (async () => {
      const receipt = await inTenant(this.ds, tenantId, async (m) => {
        const [rows] = await m.query(
          `UPDATE ${KEYS} SET last_used_at = now(), version = version + 1
           WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2)) RETURNING version, last_used_at`,
          [id, LAST_USED_EVERY_MS / 1000],
        );
        if (!rows.length) return null; // another replica recorded it
        const event = { tenantId, aggregateType: 'api_key', aggregateId: id, version: rows[0].version, type: A.apiKeyUsed, data: { at: (rows[0].last_used_at as Date).toISOString() } };
        return this.outbox.record(m, [event], { actor: { kind: 'api_key', id, tenantId }, correlationId: newEventId() });
      });
      if (receipt) await this.outbox.sent(receipt);
    })().catch((err: unknown) => this.logger.warn({ err, keyId: id }, "an API key's last use could not be recorded"));
  }
}
