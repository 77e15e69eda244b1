import { createHash } from 'node:crypto';
import { Inject, Injectable, OnModuleDestroy, Optional } from '@nestjs/common';
import { createLocalJWKSet, errors as joseErrors, JSONWebKeySet, JWTPayload, jwtVerify } from 'jose';
import { z } from 'zod';
import { KeelConfig } from '@keel/config';
import { KeelError, OidcConfig } from '@keel/contracts';
import { randomToken } from '@keel/crypto';
import { KEEL_LOGGER } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { OutboundError, SafeFetch, SafeRequest, SafeResponse } from '@keel/outbound';

/** Each call to a provider; four of them fit in the gateway's wait for a callback. */
const PROVIDER_TIMEOUT_MS = 4_000;
const DISCOVERY_TTL_MS = 10 * 60_000;
/** A provider's keys are read again after this long, or on an unknown key id once this cool-down has passed. */
const KEYS_TTL_MS = 10 * 60_000;
const KEYS_COOLDOWN_MS = 30_000;
/** The largest document read from a provider. */
const MAX_DOCUMENT_BYTES = 512 * 1024;
const CLOCK_TOLERANCE_SECONDS = 60;
/** Asymmetric algorithms only: an ID token is checked against the provider's published keys. */
const ID_TOKEN_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
const BASE_SCOPES = ['openid', 'email', 'profile'];

// Not strict: discovery documents carry many more fields than the code flow needs.
const discoverySchema = z.object({
  issuer: z.string(),
  authorization_endpoint: z.url(),
  token_endpoint: z.url(),
  jwks_uri: z.url(),
  userinfo_endpoint: z.url().optional(),
  token_endpoint_auth_methods_supported: z.array(z.string()).optional(),
  code_challenge_methods_supported: z.array(z.string()).optional(),
});
export type OidcDiscovery = z.infer<typeof discoverySchema>;

const tokenResponseSchema = z.object({ id_token: z.string().min(1), access_token: z.string().min(1).optional() });
const tokenErrorSchema = z.object({ error: z.string(), error_description: z.string().optional() });

/** Proof Key for Code Exchange (RFC 7636, S256): the verifier stays with Keel, its hash travels. */
export function newPkce(): { verifier: string; challenge: string } {
  const verifier = randomToken(32);
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

/** The endpoints Keel uses, each from the provider's configuration or else from its discovery document (issuer's origin only). */
export interface OidcEndpoints {
  authorization: string;
  token: string;
  jwks: string;
  userinfo?: string;
}

const DISCOVERED = { authorization: 'authorization_endpoint', token: 'token_endpoint', jwks: 'jwks_uri', userinfo: 'userinfo_endpoint' } as const;

const originOf = (url: string) => (URL.canParse(url) ? new URL(url).origin : url);

/**
 * The provider cannot be used now; `reason` says why, for whoever can fix it, and `field` which
 * part of the provider's configuration it concerns. Whether a server could not be reached,
 * refused, timed out or answered too much is never told apart (that would map the network).
 */
export class ProviderUnusable extends KeelError {
  constructor(issuer: string, readonly reason: string, readonly field = 'config.issuer') {
    super('service_unavailable', `The identity provider at ${originOf(issuer)} could not be used (${reason}); try again shortly, or ask your administrator to check it.`);
  }
}

const UNREACHABLE = 'it could not be reached or answered unusably';

/** RFC 6749 §2.3.1: client id and secret are form-encoded before they go into Basic credentials. */
const formEncode = (value: string) => encodeURIComponent(value).replace(/%20/g, '+');

/**
 * The relying-party side of the OpenID Connect authorization code flow with PKCE, by hand on
 * `jose`: discovery, the authorization URL, the code exchange (client secret, basic or post),
 * ID token verification (signature from the provider's JWKS, iss, aud, azp, exp, nonce) and
 * the UserInfo claims, which many providers send there rather than in the ID token.
 */
@Injectable()
export class OidcClient implements OnModuleDestroy {
  private readonly discovered = new Map<string, { doc: OidcDiscovery; at: number }>();
  private readonly keySets = new Map<string, { keys: ReturnType<typeof createLocalJWKSet>; at: number }>();
  /** Every request to a provider goes through it: https to public addresses only, size- and time-limited. */
  readonly http: SafeFetch;

  constructor(
    @Inject('KEEL_AUTH_CONFIG') config: Pick<KeelConfig, 'KEEL_SSO_ALLOW_HTTP_LOOPBACK'>,
    @Optional() @Inject(KEEL_LOGGER) private readonly logger?: Logger,
  ) {
    this.http = new SafeFetch({ allowHttpLoopback: config.KEEL_SSO_ALLOW_HTTP_LOOPBACK, maxBytes: MAX_DOCUMENT_BYTES, timeoutMs: PROVIDER_TIMEOUT_MS });
  }

  async onModuleDestroy(): Promise<void> {
    await this.http.close();
  }

  private async call(issuer: string, url: string, init: SafeRequest = {}, field = 'config.issuer'): Promise<SafeResponse> {
    try {
      return await this.http.fetch(url, init);
    } catch (error) {
      if (!(error instanceof OutboundError)) throw error;
      // The caller learns only that it failed; the operator's log says why (a closed port, TLS, a refused address).
      this.logger?.warn({ issuer, origin: error.origin, detail: error.detail }, 'an identity provider could not be reached or answered unusably');
      throw new ProviderUnusable(issuer, UNREACHABLE, field);
    }
  }

  private json(issuer: string, res: SafeResponse): unknown {
    try {
      return JSON.parse(res.body.toString('utf8'));
    } catch {
      throw new ProviderUnusable(issuer, `${new URL(res.url).pathname} did not answer JSON`);
    }
  }

  /**
   * Why a provider's configuration cannot work, judged without contacting it (scheme, address
   * literals, the development setting); undefined when it may be tried.
   */
  configProblem(config: OidcConfig): { field: string; message: string } | undefined {
    const issuerProblem = this.http.urlProblem(config.issuer);
    if (issuerProblem) return { field: 'config.issuer', message: issuerProblem };
    for (const [name, url] of Object.entries(config.endpoints ?? {})) {
      const problem = url === undefined ? undefined : this.http.urlProblem(url);
      if (problem) return { field: `config.endpoints.${name}`, message: problem };
    }
    return undefined;
  }

  /**
   * The endpoints to use: each named in the configuration, else the discovery document's, which
   * must then be on the issuer's origin (a discovery document cannot send the client secret or
   * the browser elsewhere).
   */
  endpoints(doc: OidcDiscovery, config: OidcConfig): OidcEndpoints {
    const issuerOrigin = originOf(config.issuer);
    const pick = (name: keyof OidcEndpoints): string | undefined => {
      const configured = config.endpoints?.[name];
      if (configured) return configured;
      const discovered = doc[DISCOVERED[name]];
      if (discovered === undefined || originOf(discovered) === issuerOrigin) return discovered;
      throw new ProviderUnusable(
        config.issuer,
        `its discovery document names a ${DISCOVERED[name]} on another origin (${originOf(discovered)}); name it in config.endpoints.${name} to use it`,
        `config.endpoints.${name}`,
      );
    };
    const userinfo = pick('userinfo');
    return { authorization: pick('authorization')!, token: pick('token')!, jwks: pick('jwks')!, ...(userinfo ? { userinfo } : {}) };
  }

  /** Everything a sign-in needs from the provider, checked when its configuration is saved. */
  async check(config: OidcConfig): Promise<void> {
    const problem = this.configProblem(config);
    if (problem) throw new ProviderUnusable(config.issuer, `${problem.field} ${problem.message}`, problem.field);
    this.endpoints(await this.discover(config.issuer), config);
  }

  async discover(issuer: string): Promise<OidcDiscovery> {
    const hit = this.discovered.get(issuer);
    if (hit && Date.now() - hit.at < DISCOVERY_TTL_MS) return hit.doc;
    const res = await this.call(issuer, `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`, { headers: { accept: 'application/json' } });
    if (!res.ok) throw new ProviderUnusable(issuer, `its discovery document answered ${res.status}`);
    const parsed = discoverySchema.safeParse(await this.json(issuer, res));
    if (!parsed.success) throw new ProviderUnusable(issuer, `its discovery document has no valid ${parsed.error.issues.map((i) => i.path.join('.')).join(', ')}`);
    const doc = parsed.data;
    if (doc.issuer !== issuer) throw new ProviderUnusable(issuer, `its discovery document names the issuer "${doc.issuer}"; configure exactly that`);
    if (doc.code_challenge_methods_supported && !doc.code_challenge_methods_supported.includes('S256')) {
      throw new ProviderUnusable(issuer, 'it does not support PKCE with S256');
    }
    remember(this.discovered, issuer, { doc, at: Date.now() });
    return doc;
  }

  authorizationUrl(doc: OidcDiscovery, config: OidcConfig, p: { redirectUri: string; state: string; nonce: string; codeChallenge: string }): string {
    const url = new URL(this.endpoints(doc, config).authorization);
    const params = {
      response_type: 'code',
      client_id: config.clientId,
      redirect_uri: p.redirectUri,
      scope: [...new Set([...BASE_SCOPES, ...config.scopes])].join(' '),
      state: p.state,
      nonce: p.nonce,
      code_challenge: p.codeChallenge,
      code_challenge_method: 'S256',
    };
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
    return url.toString();
  }

  /**
   * Completes the flow: exchanges the code, verifies the ID token and returns its claims,
   * completed by the UserInfo endpoint's (the ID token's own claims win).
   */
  async redeem(
    config: OidcConfig,
    clientSecret: string,
    p: { code: string; redirectUri: string; codeVerifier: string; nonce: string; responseIssuer?: string },
  ): Promise<Record<string, unknown>> {
    const doc = await this.discover(config.issuer);
    // RFC 9207: a provider that names itself in the response must be the one the sign-in began with.
    if (p.responseIssuer !== undefined && p.responseIssuer !== doc.issuer) {
      throw new KeelError('invalid_token', 'The sign-in response comes from another identity provider than the one it began with; start the sign-in again.');
    }
    const endpoints = this.endpoints(doc, config);
    const tokens = await this.exchange(doc, endpoints, config, clientSecret, p);
    const claims = await this.verifyIdToken(doc, endpoints, config, tokens.id_token, p.nonce);
    if (!endpoints.userinfo || !tokens.access_token) return claims;
    return { ...(await this.userinfo(doc, endpoints.userinfo, tokens.access_token, String(claims.sub))), ...claims };
  }

  private async exchange(
    doc: OidcDiscovery,
    endpoints: OidcEndpoints,
    config: OidcConfig,
    clientSecret: string,
    p: { code: string; redirectUri: string; codeVerifier: string },
  ) {
    const methods = doc.token_endpoint_auth_methods_supported ?? ['client_secret_basic'];
    const form = new URLSearchParams({ grant_type: 'authorization_code', code: p.code, redirect_uri: p.redirectUri, code_verifier: p.codeVerifier });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    if (methods.includes('client_secret_basic')) {
      headers.authorization = `Basic ${Buffer.from(`${formEncode(config.clientId)}:${formEncode(clientSecret)}`).toString('base64')}`;
    } else if (methods.includes('client_secret_post')) {
      form.set('client_id', config.clientId);
      form.set('client_secret', clientSecret);
    } else {
      throw new ProviderUnusable(doc.issuer, 'its token endpoint accepts neither client_secret_basic nor client_secret_post');
    }
    // POST: a redirect answer is not followed (the secret goes to this endpoint only).
    const res = await this.call(doc.issuer, endpoints.token, { method: 'POST', headers, body: form.toString() });
    const body = await this.json(doc.issuer, res);
    if (res.ok) {
      const tokens = tokenResponseSchema.safeParse(body);
      if (!tokens.success) throw new ProviderUnusable(doc.issuer, 'its token endpoint returned no ID token; is "openid" among the client\'s scopes?');
      return tokens.data;
    }
    const refused = tokenErrorSchema.safeParse(body);
    if (!refused.success || res.status >= 500) throw new ProviderUnusable(doc.issuer, `its token endpoint answered ${res.status}`);
    const reason = `${refused.data.error}${refused.data.error_description ? `: ${refused.data.error_description}` : ''}`;
    if (refused.data.error === 'invalid_client') {
      throw new KeelError('invalid_credentials', `The identity provider did not accept Keel's client credentials (${reason}); ask your administrator to check the client id and secret.`);
    }
    throw new KeelError('invalid_credentials', `The identity provider did not accept the sign-in (${reason}); start the sign-in again.`);
  }

  /** The provider's keys, read through the safe fetch (cached; read again once stale). */
  private async keySet(issuer: string, jwksUri: string, fresh = false): Promise<{ keys: ReturnType<typeof createLocalJWKSet>; at: number }> {
    const hit = this.keySets.get(jwksUri);
    if (hit && !fresh && Date.now() - hit.at < KEYS_TTL_MS) return hit;
    const res = await this.call(issuer, jwksUri, { headers: { accept: 'application/json' } }, 'config.endpoints.jwks');
    if (!res.ok) throw new ProviderUnusable(issuer, `its keys answered ${res.status}`);
    let keys: ReturnType<typeof createLocalJWKSet>;
    try {
      keys = createLocalJWKSet(this.json(issuer, res) as JSONWebKeySet);
    } catch (error) {
      if (error instanceof ProviderUnusable) throw error;
      throw new ProviderUnusable(issuer, 'its keys are not a JSON Web Key Set');
    }
    const entry = { keys, at: Date.now() };
    remember(this.keySets, jwksUri, entry);
    return entry;
  }

  /** A key resolver for jwtVerify: an unknown key id reads the keys again (rotation), at most once per cool-down. */
  private keyResolver(issuer: string, jwksUri: string) {
    return async (...args: Parameters<ReturnType<typeof createLocalJWKSet>>) => {
      const set = await this.keySet(issuer, jwksUri);
      try {
        return await set.keys(...args);
      } catch (error) {
        if (!(error instanceof joseErrors.JWKSNoMatchingKey) || Date.now() - set.at < KEYS_COOLDOWN_MS) throw error;
        return (await this.keySet(issuer, jwksUri, true)).keys(...args);
      }
    };
  }

  private async verifyIdToken(doc: OidcDiscovery, endpoints: OidcEndpoints, config: OidcConfig, idToken: string, nonce: string): Promise<JWTPayload> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(idToken, this.keyResolver(doc.issuer, endpoints.jwks), {
        issuer: doc.issuer,
        audience: config.clientId,
        algorithms: ID_TOKEN_ALGORITHMS,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        requiredClaims: ['sub', 'iat', 'exp'],
      }));
    } catch (error) {
      if (error instanceof KeelError) throw error;
      if (error instanceof joseErrors.JWKSInvalid || !(error instanceof joseErrors.JOSEError)) {
        throw new ProviderUnusable(doc.issuer, 'its keys could not be used');
      }
      throw new KeelError('invalid_token', `The identity provider's ID token is not valid (${error.message}); start the sign-in again.`);
    }
    // Sent back unchanged, the nonce binds the token to this sign-in: a token replayed from another is refused.
    if (payload.nonce !== nonce) throw new KeelError('invalid_token', 'The ID token was not issued for this sign-in (nonce); start the sign-in again.');
    if (Array.isArray(payload.aud) && payload.aud.length > 1 && payload.azp !== config.clientId) {
      throw new KeelError('invalid_token', 'The ID token was issued to another client (azp); ask your administrator to check the client id.');
    }
    return payload;
  }

  private async userinfo(doc: OidcDiscovery, userinfoUrl: string, accessToken: string, subject: string): Promise<Record<string, unknown>> {
    const res = await this.call(doc.issuer, userinfoUrl, { headers: { authorization: `Bearer ${accessToken}`, accept: 'application/json' } }, 'config.endpoints.userinfo');
    if (!res.ok) throw new ProviderUnusable(doc.issuer, `its UserInfo endpoint answered ${res.status}`);
    const claims = await this.json(doc.issuer, res);
    if (!claims || typeof claims !== 'object') throw new ProviderUnusable(doc.issuer, 'its UserInfo endpoint did not answer a JSON object');
    // OIDC Core 5.3.2: UserInfo about anyone but the ID token's subject must not be used.
    if ((claims as { sub?: unknown }).sub !== subject) throw new KeelError('invalid_token', 'The identity provider described another user than the one signed in; start the sign-in again.');
    return claims as Record<string, unknown>;
  }
}

/** Providers' documents kept at once: a tenant saving providers by the thousand cannot grow memory without bound. */
export const MAX_CACHED_PROVIDERS = 1_000;

/** Sets `key` as the newest entry, dropping the oldest beyond MAX_CACHED_PROVIDERS. */
function remember<V>(cache: Map<string, V>, key: string, value: V): void {
  cache.delete(key);
  cache.set(key, value);
  while (cache.size > MAX_CACHED_PROVIDERS) cache.delete(cache.keys().next().value!);
}
