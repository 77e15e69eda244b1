import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { CommandResult, FieldError, IdentityProvider, IdentityProviderInput, KeelError, newEventId, parseOrThrow, rolesGrantedBy, ssoEventTypes as E, ssoRpc } from '@keel/contracts';
import { kekFrom, open, seal } from '@keel/crypto';
import { inTenant, tenantQuery } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { MessagePattern } from '@keel/messaging';
import { AUTH_SCHEMA } from '../database/schema';
import { RbacService } from '../rbac/rbac.service';
import { requireGrantable } from '../rbac/authority';
import { RoleCatalog } from '../rbac/role-catalog';
import { TenantLookup } from '../users/tenant-lookup';
import { AuthMeta } from '../users/users.service';
import { OidcClient, ProviderUnusable } from './oidc-client';

const PROVIDERS = `"${AUTH_SCHEMA}".identity_providers`;

// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  create: ssoRpc.createIdentityProvider.request,
  update: ssoRpc.updateIdentityProvider.request,
  remove: ssoRpc.deleteIdentityProvider.request,
  get: ssoRpc.identityProvider.request,
  list: ssoRpc.identityProviders.request,
};

interface ProviderRow {
  id: string;
  tenant_id: string;
  type: 'oidc';
  name: string;
  config: IdentityProvider['config'];
  mapping: IdentityProvider['mapping'];
  redirect_uris: string[];
  client_secret_enc: Buffer;
  version: number;
  created_at: Date;
  updated_at: Date;
}

function view(r: ProviderRow): IdentityProvider {
  return {
    id: r.id, tenantId: r.tenant_id, type: r.type, name: r.name, config: r.config, mapping: r.mapping, redirectUris: r.redirect_uris,
    version: r.version, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
  };
}

/** What an event records of a provider's settings: everything but the secret. */
function settingsOf(data: IdentityProviderInput) {
  return { type: data.type, name: data.name, config: data.config, mapping: data.mapping, redirectUris: data.redirectUris };
}

/**
 * A tenant's identity providers. Each change commits together with its event (the outbox), and
 * the command answers once the event is on the log. The client secret is
 * sealed under the key-encryption key, bound to the provider's id, and never leaves this service.
 */
@Injectable()
export class IdentityProvidersService {
  private readonly kek: Buffer;

  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject('KEEL_AUTH_CONFIG') config: KeelConfig,
    private readonly tenants: TenantLookup,
    private readonly outbox: Outbox,
    private readonly oidc: OidcClient,
    private readonly catalog: RoleCatalog,
    private readonly rbac: RbacService,
  ) {
    this.kek = kekFrom(config.KEEL_KEK);
  }

  /**
   * What would fail every sign-in is refused when the provider is saved: roles its author does
   * not hold, teams the tenant does not have, an issuer Keel cannot discover or may not connect
   * to (not https, a non-public address), endpoints on other origins than the issuer's.
   */
  private async check(tenantId: string, data: IdentityProviderInput, meta: AuthMeta): Promise<void> {
    requireGrantable(meta.permissions, await this.catalog.roles(tenantId), rolesGrantedBy(data.mapping));
    const teams = new Set((await this.rbac.listTeams({ tenantId })).items.map((t) => t.id));
    const unknown: FieldError[] = Object.entries(data.mapping.teamMapping)
      .filter(([, t]) => !teams.has(t.teamId))
      .map(([group]) => ({ field: `mapping.teamMapping.${group}.teamId`, message: 'no such team in this tenant' }));
    if (unknown.length) throw new KeelError('validation_failed', 'The team mapping names teams this tenant does not have; create them first.', unknown);
    // Scheme and address literals first, without a connection; then discovery through the safe fetch.
    const problem = this.oidc.configProblem(data.config);
    if (problem) throw new KeelError('validation_failed', `Keel does not connect to this identity provider: ${problem.field} ${problem.message}.`, [problem]);
    try {
      await this.oidc.check(data.config);
    } catch (error) {
      if (!(error instanceof ProviderUnusable)) throw error;
      throw new KeelError('validation_failed', `Keel cannot use this identity provider (${error.reason}); check ${error.field} and that Keel can reach the provider.`, [
        { field: error.field, message: error.reason },
      ]);
    }
  }

  @MessagePattern(ssoRpc.createIdentityProvider.subject)
  async create(body: unknown): Promise<CommandResult<IdentityProvider>> {
    const { meta, payload } = parseOrThrow(requests.create, body, 'identity provider');
    const { tenantId, data } = payload;
    await this.tenants.active(tenantId);
    await this.check(tenantId, data, meta);
    const id = newEventId();
    const { row, receipt } = await inTenant(this.ds, tenantId, async (m) => {
      const [row]: ProviderRow[] = await m.query(
        `INSERT INTO ${PROVIDERS} (id, tenant_id, type, name, config, mapping, redirect_uris, client_secret_enc)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *`,
        [id, tenantId, data.type, data.name, data.config, data.mapping, data.redirectUris, seal(this.kek, Buffer.from(data.clientSecret), id)],
      );
      const event = { tenantId, aggregateType: 'identity_provider', aggregateId: id, version: row!.version, type: E.providerCreated, data: settingsOf(data) };
      return { row: row!, receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { state: view(row), version: row.version, position };
  }

  /** Replaces the provider's settings; an omitted client secret keeps the current one. Honours the expected version. */
  @MessagePattern(ssoRpc.updateIdentityProvider.subject)
  async update(body: unknown): Promise<CommandResult<IdentityProvider>> {
    const { meta, payload } = parseOrThrow(requests.update, body, 'identity provider');
    const { tenantId, providerId, data } = payload;
    const current = await this.find(tenantId, providerId);
    if (current.type !== data.type) {
      throw new KeelError('validation_failed', `A provider's type cannot change; create a ${data.type} provider and delete this one.`, [{ field: 'type', message: `must stay ${current.type}` }]);
    }
    await this.check(tenantId, data, meta);
    const secret = data.clientSecret === undefined ? null : seal(this.kek, Buffer.from(data.clientSecret), providerId);
    const { row, receipt } = await inTenant(this.ds, tenantId, async (m) => {
      const [rows]: [ProviderRow[], number] = await m.query(
        `UPDATE ${PROVIDERS} SET name = $3, config = $4, mapping = $5, redirect_uris = $6,
           client_secret_enc = COALESCE($7, client_secret_enc), version = version + 1, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 AND ($8::int IS NULL OR version = $8) RETURNING *`,
        [providerId, tenantId, data.name, data.config, data.mapping, data.redirectUris, secret, meta.expectedVersion ?? null],
      );
      const row = rows[0];
      if (!row) {
        const now = await this.find(tenantId, providerId);
        throw new KeelError('version_mismatch', `The identity provider is at version ${now.version}, not ${meta.expectedVersion}; fetch it again and retry.`);
      }
      const event = {
        tenantId, aggregateType: 'identity_provider', aggregateId: providerId, version: row.version,
        type: E.providerUpdated, data: { ...settingsOf(data), clientSecretChanged: secret !== null },
      };
      return { row, receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { state: view(row), version: row.version, position };
  }

  /** Deletes the provider; its links to users go with it (the users stay, and keep their sessions until they end). */
  @MessagePattern(ssoRpc.deleteIdentityProvider.subject)
  async remove(body: unknown): Promise<{ position: number }> {
    const { meta, payload } = parseOrThrow(requests.remove, body, 'identity provider deletion');
    const receipt = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [rows]: [{ name: string; version: number }[], number] = await m.query(
        `DELETE FROM ${PROVIDERS} WHERE id = $1 AND tenant_id = $2 RETURNING name, version`,
        [payload.providerId, payload.tenantId],
      );
      if (!rows.length) throw this.notFound();
      const event = {
        tenantId: payload.tenantId, aggregateType: 'identity_provider', aggregateId: payload.providerId, version: rows[0]!.version + 1,
        type: E.providerDeleted, data: { name: rows[0]!.name },
      };
      return this.outbox.record(m, [event], meta);
    });
    return { position: (await this.outbox.sent(receipt)).position };
  }

  @MessagePattern(ssoRpc.identityProvider.subject)
  async get(body: unknown): Promise<IdentityProvider> {
    const q = parseOrThrow(requests.get, body, 'identity provider lookup');
    return this.find(q.tenantId, q.providerId);
  }

  @MessagePattern(ssoRpc.identityProviders.subject)
  async list(body: unknown): Promise<{ items: IdentityProvider[] }> {
    const q = parseOrThrow(requests.list, body, 'identity provider listing');
    const rows: ProviderRow[] = await tenantQuery(this.ds, q.tenantId, `SELECT * FROM ${PROVIDERS} WHERE tenant_id = $1 ORDER BY created_at, id`, [q.tenantId]);
    return { items: rows.map(view) };
  }

  private notFound(): KeelError {
    return new KeelError('not_found', 'No such identity provider in this tenant.');
  }

  /** The provider's row, checked to belong to `tenantId` (else 404: no cross-tenant hints). */
  private async row(tenantId: string, providerId: string): Promise<ProviderRow> {
    const [row]: ProviderRow[] = await tenantQuery(this.ds, tenantId, `SELECT * FROM ${PROVIDERS} WHERE id = $1 AND tenant_id = $2`, [providerId, tenantId]);
    if (!row) throw this.notFound();
    return row;
  }

  async find(tenantId: string, providerId: string): Promise<IdentityProvider> {
    return view(await this.row(tenantId, providerId));
  }

  /** The provider and its opened client secret, for the code exchange. */
  async withSecret(tenantId: string, providerId: string): Promise<{ provider: IdentityProvider; clientSecret: string }> {
    const row = await this.row(tenantId, providerId);
    return { provider: view(row), clientSecret: open(this.kek, row.client_secret_enc, providerId).toString() };
  }
}
