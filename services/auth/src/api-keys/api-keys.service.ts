import { Inject, Injectable } from '@nestjs/common';
import { timingSafeEqual } from 'node:crypto';
import { DataSource } from 'typeorm';
import { ApiKeyInfo, authEventTypes as A, authRpc, KeelError, newEventId, parseOrThrow, storableText, textProblem } from '@keel/contracts';
import { randomToken, sha256Hex } from '@keel/crypto';
import { ALL_TENANTS, inTenant, tenantQuery } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { MessagePattern } from '@keel/messaging';
import { AUTH_SCHEMA } from '../database/schema';

const KEYS = `"${AUTH_SCHEMA}".api_keys`;
// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  create: authRpc.createApiKey.request,
  revoke: authRpc.revokeApiKey.request,
  list: authRpc.apiKeys.request,
  verify: authRpc.verifyApiKey.request,
};

/** `keel_<id without dashes>_<secret>`: the id finds the row, the whole string is the secret. */
const SECRET = /^keel_([0-9a-f]{32})_[A-Za-z0-9_-]{32,}$/;

function toInfo(r: Record<string, unknown>): ApiKeyInfo {
  return {
    id: r.id as string, tenantId: r.tenant_id as string, name: r.name as string, permissions: r.permissions as string[],
    expiresAt: (r.expires_at as Date).toISOString(), createdBy: r.created_by as string, createdAt: (r.created_at as Date).toISOString(),
    revokedAt: r.revoked_at ? (r.revoked_at as Date).toISOString() : null,
  };
}

@Injectable()
export class ApiKeysService {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly outbox: Outbox,
  ) {}

  @MessagePattern(authRpc.createApiKey.subject)
  async create(body: unknown): Promise<ApiKeyInfo & { secret: string; position: number }> {
    const { meta, payload } = parseOrThrow(requests.create, body, 'API key');
    const { name, permissions, expiresAt } = payload.data;
    if (new Date(expiresAt).getTime() <= Date.now()) {
      throw new KeelError('validation_failed', 'expiresAt must be in the future.', [{ field: 'expiresAt', message: 'must be in the future' }]);
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
        `INSERT INTO ${KEYS} (id, tenant_id, name, secret_hash, permissions, expires_at, created_by, version) VALUES ($1, $2, $3, $4, $5, $6, $7, 1) RETURNING *`,
        [id, payload.tenantId, name, sha256Hex(secret), [...new Set(permissions)], expiresAt, meta.actor.id],
      );
      const event = { tenantId: payload.tenantId, aggregateType: 'api_key', aggregateId: id, version: 1, type: A.apiKeyCreated, data: { name, permissions, expiresAt } };
      return { row: inserted, receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { ...toInfo(row), secret, position };
  }

  @MessagePattern(authRpc.revokeApiKey.subject)
  async revoke(body: unknown): Promise<ApiKeyInfo & { position: number }> {
    const { meta, payload } = parseOrThrow(requests.revoke, body, 'API key revocation');
    const { row, receipt } = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [rows] = await m.query(
        `UPDATE ${KEYS} SET revoked_at = now(), version = version + 1 WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING *`,
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

  /** For the gateway: who a presented key is, or invalid_token. */
  @MessagePattern(authRpc.verifyApiKey.subject)
  async verify(body: unknown): Promise<ApiKeyInfo> {
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
    if (!row || !timingSafeEqual(Buffer.from(row.secret_hash), Buffer.from(sha256Hex(secret)))) throw invalid;
    if (row.revoked_at || (row.expires_at as Date).getTime() <= Date.now()) throw new KeelError('invalid_token', 'The API key is revoked or expired.');
    return toInfo(row);
  }
}
