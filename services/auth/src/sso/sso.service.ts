import { Inject, Injectable } from '@nestjs/common';
import { z } from 'zod';
import { Actor, clientSchema, CommandMeta, DEFAULT_TENANT_SETTINGS, KeelError, parseOrThrow, ssoRpc, Tenant, TokenPair } from '@keel/contracts';
import { randomToken, sha256Hex } from '@keel/crypto';
import { MessagePattern } from '@keel/messaging';
import { requireAllowedNetwork } from '../sessions/allowed-network';
import { TenantLookup } from '../users/tenant-lookup';
import { AuthMeta } from '../users/users.service';
import { mapClaims } from './claim-mapping';
import { ExternalIdentities } from './external-identities';
import { IdentityProvidersService } from './identity-providers.service';
import { newPkce, OidcClient } from './oidc-client';
import { SESSION_STARTER, SessionStarter } from './session-starter';
import { SsoStates } from './sso-states';

// Each command parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  start: ssoRpc.startSso.request,
  complete: ssoRpc.completeSso.request,
};

type Client = z.infer<typeof clientSchema>;

export interface SsoSignedIn {
  tokens: TokenPair;
  /** Where the browser goes on with the tokens, when the sign-in was started with one. */
  redirectUri?: string;
}

/**
 * Single sign-on with OpenID Connect (authorization code + PKCE). `start` remembers the sign-in
 * under a random `state` and answers the provider's authorization URL; `complete` takes that
 * state back once, redeems the code, maps the verified claims, links (or provisions) the user
 * and starts a Keel session exactly as a password sign-in does. The provider's own sign-in
 * policy (second factor included) stands in for Keel's password and TOTP checks.
 */
@Injectable()
export class SsoService {
  constructor(
    private readonly tenants: TenantLookup,
    private readonly providers: IdentityProvidersService,
    private readonly identities: ExternalIdentities,
    private readonly oidc: OidcClient,
    private readonly states: SsoStates,
    @Inject(SESSION_STARTER) private readonly sessions: SessionStarter,
  ) {}

  /** An active tenant; anything else is "no such provider", so the public routes tell nothing about tenants. */
  private async activeTenant(idOrSlug: string): Promise<Tenant> {
    const tenant = await this.tenants.find(idOrSlug);
    if (!tenant || tenant.status !== 'active') throw new KeelError('not_found', 'No such identity provider for this tenant.');
    return tenant;
  }

  @MessagePattern(ssoRpc.startSso.subject)
  async start(body: unknown): Promise<{ authorizationUrl: string }> {
    const { payload } = parseOrThrow(requests.start, body, 'single sign-on start');
    const tenant = await this.activeTenant(payload.tenant);
    const provider = await this.providers.find(tenant.id, payload.providerId);
    if (payload.redirectUri && !provider.redirectUris.includes(payload.redirectUri)) {
      throw new KeelError('validation_failed', 'The redirectUri is not one this identity provider allows; add it to the provider\'s redirectUris first.', [
        { field: 'redirectUri', message: 'not among the provider\'s redirectUris' },
      ]);
    }
    const doc = await this.oidc.discover(provider.config.issuer);
    const pkce = newPkce();
    const nonce = randomToken();
    const state = await this.states.save({
      tenantId: tenant.id,
      providerId: provider.id,
      codeVerifier: pkce.verifier,
      nonce,
      callbackUrl: payload.callbackUrl,
      browserBindingHash: sha256Hex(payload.browserBinding),
      ...(payload.redirectUri ? { redirectUri: payload.redirectUri } : {}),
    });
    return { authorizationUrl: this.oidc.authorizationUrl(doc, provider.config, { redirectUri: payload.callbackUrl, state, nonce, codeChallenge: pkce.challenge }) };
  }

  @MessagePattern(ssoRpc.completeSso.subject)
  async complete(body: unknown): Promise<SsoSignedIn> {
    const { client: c, payload } = parseOrThrow(requests.complete, body, 'single sign-on callback');
    const pending = await this.states.take(payload.state);
    // The browser that started the sign-in holds the binding in a cookie: a callback URL carried
    // to another browser (to sign its user in as someone else) is refused there.
    if (!pending || !payload.browserBinding || sha256Hex(payload.browserBinding) !== pending.browserBindingHash) {
      throw new KeelError('invalid_token', 'This sign-in is unknown, expired, already completed or was started in another browser; start the sign-in again.');
    }
    if (payload.error) {
      const detail = payload.errorDescription ? `${payload.error}: ${payload.errorDescription}` : payload.error;
      throw new KeelError('invalid_credentials', `The identity provider did not sign you in (${detail}); start the sign-in again, or ask your administrator.`);
    }
    if (!payload.code) {
      throw new KeelError('validation_failed', 'The callback carries no authorization code; start the sign-in again.', [{ field: 'code', message: 'required' }]);
    }
    const tenant = await this.activeTenant(pending.tenantId);
    // Before anything is provisioned or granted: a sign-in from outside the tenant's networks does nothing.
    requireAllowedNetwork(c.ip, tenant.settings.allowedIpRanges);
    const { provider, clientSecret } = await this.providers.withSecret(tenant.id, pending.providerId);
    const claims = await this.oidc.redeem(provider.config, clientSecret, {
      code: payload.code,
      redirectUri: pending.callbackUrl,
      codeVerifier: pending.codeVerifier,
      nonce: pending.nonce,
      ...(payload.iss !== undefined ? { responseIssuer: payload.iss } : {}),
    });
    const identity = mapClaims(claims, provider.mapping);

    // Acting for the provider needs no permission check: its mapping was checked against its
    // author's permissions when it was saved.
    // Without the person's address: it is theirs, recorded under their own key by their session's events.
    const byProvider: AuthMeta = { actor: { kind: 'system', id: `identity-provider:${provider.id}`, tenantId: tenant.id }, correlationId: c.correlationId, permissions: '*' };
    const asUser = (userId: string) => this.meta(c, { kind: 'user', id: userId, tenantId: tenant.id });
    const link = await this.identities.link(tenant.id, provider, identity, byProvider, asUser);
    const { roles, teamRoles } = await this.identities.applyGroups(tenant.id, provider, link, identity, byProvider);
    const tokens = await this.sessions.startSession(tenant.id, link.userId, roles, { ...DEFAULT_TENANT_SETTINGS, ...tenant.settings }, asUser(link.userId));
    await this.identities.recordSignIn(tenant.id, provider, link, { roles, teamRoles }, asUser(link.userId));
    return { tokens, ...(pending.redirectUri ? { redirectUri: pending.redirectUri } : {}) };
  }

  private meta(c: Client, actor: Omit<Actor, 'ip' | 'userAgent'>): CommandMeta {
    return { actor: { ...actor, ...(c.ip ? { ip: c.ip } : {}), ...(c.userAgent ? { userAgent: c.userAgent } : {}) }, correlationId: c.correlationId };
  }
}
