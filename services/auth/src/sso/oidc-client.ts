import { createHash } from 'node:crypto';
import { createRemoteJWKSet, errors as joseErrors, JWTPayload, jwtVerify } from 'jose';
import { z } from 'zod';
import { KeelError, OidcConfig } from '@keel/contracts';
import { randomToken } from '@keel/crypto';

/** Each call to a provider; four of them fit in the gateway's wait for a callback. */
const PROVIDER_TIMEOUT_MS = 4_000;
const DISCOVERY_TTL_MS = 10 * 60_000;
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

/** The provider cannot be used now; `reason` says why, for whoever can fix it. */
export class ProviderUnusable extends KeelError {
  constructor(issuer: string, readonly reason: string) {
    super('service_unavailable', `The identity provider ${issuer} could not be used (${reason}); try again shortly, or ask your administrator to check it.`);
  }
}

/** RFC 6749 §2.3.1: client id and secret are form-encoded before they go into Basic credentials. */
const formEncode = (value: string) => encodeURIComponent(value).replace(/%20/g, '+');

/**
 * The relying-party side of the OpenID Connect authorization code flow with PKCE, by hand on
 * `jose`: discovery, the authorization URL, the code exchange (client secret, basic or post),
 * ID token verification (signature from the provider's JWKS, iss, aud, azp, exp, nonce) and
 * the UserInfo claims, which many providers send there rather than in the ID token.
 */
export class OidcClient {
  private readonly discovered = new Map<string, { doc: OidcDiscovery; at: number }>();
  private readonly keySets = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

  private async call(issuer: string, url: string, init: RequestInit = {}): Promise<Response> {
    try {
      // Never follow redirects: a provider's endpoints are the ones its discovery document names.
      return await fetch(url, { ...init, redirect: 'error', signal: AbortSignal.timeout(PROVIDER_TIMEOUT_MS) });
    } catch (error) {
      throw new ProviderUnusable(issuer, `${new URL(url).pathname}: ${(error as Error).message}`);
    }
  }

  private async json(issuer: string, res: Response): Promise<unknown> {
    try {
      return await res.json();
    } catch {
      throw new ProviderUnusable(issuer, `${new URL(res.url).pathname} did not answer JSON`);
    }
  }

  async discover(issuer: string): Promise<OidcDiscovery> {
    const hit = this.discovered.get(issuer);
    if (hit && Date.now() - hit.at < DISCOVERY_TTL_MS) return hit.doc;
    const res = await this.call(issuer, `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
    if (!res.ok) throw new ProviderUnusable(issuer, `its discovery document answered ${res.status}`);
    const parsed = discoverySchema.safeParse(await this.json(issuer, res));
    if (!parsed.success) throw new ProviderUnusable(issuer, `its discovery document has no valid ${parsed.error.issues.map((i) => i.path.join('.')).join(', ')}`);
    const doc = parsed.data;
    if (doc.issuer !== issuer) throw new ProviderUnusable(issuer, `its discovery document names the issuer "${doc.issuer}"; configure exactly that`);
    if (doc.code_challenge_methods_supported && !doc.code_challenge_methods_supported.includes('S256')) {
      throw new ProviderUnusable(issuer, 'it does not support PKCE with S256');
    }
    this.discovered.set(issuer, { doc, at: Date.now() });
    return doc;
  }

  authorizationUrl(doc: OidcDiscovery, config: OidcConfig, p: { redirectUri: string; state: string; nonce: string; codeChallenge: string }): string {
    const url = new URL(doc.authorization_endpoint);
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
    const tokens = await this.exchange(doc, config, clientSecret, p);
    const claims = await this.verifyIdToken(doc, config, tokens.id_token, p.nonce);
    if (!doc.userinfo_endpoint || !tokens.access_token) return claims;
    return { ...(await this.userinfo(doc, tokens.access_token, String(claims.sub))), ...claims };
  }

  private async exchange(doc: OidcDiscovery, config: OidcConfig, clientSecret: string, p: { code: string; redirectUri: string; codeVerifier: string }) {
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
    const res = await this.call(doc.issuer, doc.token_endpoint, { method: 'POST', headers, body: form.toString() });
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

  private keySet(jwksUri: string) {
    let keys = this.keySets.get(jwksUri);
    if (!keys) {
      keys = createRemoteJWKSet(new URL(jwksUri), { timeoutDuration: PROVIDER_TIMEOUT_MS });
      this.keySets.set(jwksUri, keys);
    }
    return keys;
  }

  private async verifyIdToken(doc: OidcDiscovery, config: OidcConfig, idToken: string, nonce: string): Promise<JWTPayload> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(idToken, this.keySet(doc.jwks_uri), {
        issuer: doc.issuer,
        audience: config.clientId,
        algorithms: ID_TOKEN_ALGORITHMS,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        requiredClaims: ['sub', 'iat', 'exp'],
      }));
    } catch (error) {
      if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid || !(error instanceof joseErrors.JOSEError)) {
        throw new ProviderUnusable(doc.issuer, `its keys (${doc.jwks_uri}) could not be read: ${(error as Error).message}`);
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

  private async userinfo(doc: OidcDiscovery, accessToken: string, subject: string): Promise<Record<string, unknown>> {
    const res = await this.call(doc.issuer, doc.userinfo_endpoint!, { headers: { authorization: `Bearer ${accessToken}`, accept: 'application/json' } });
    if (!res.ok) throw new ProviderUnusable(doc.issuer, `its UserInfo endpoint answered ${res.status}`);
    const claims = await this.json(doc.issuer, res);
    if (!claims || typeof claims !== 'object') throw new ProviderUnusable(doc.issuer, 'its UserInfo endpoint did not answer a JSON object');
    // OIDC Core 5.3.2: UserInfo about anyone but the ID token's subject must not be used.
    if ((claims as { sub?: unknown }).sub !== subject) throw new KeelError('invalid_token', 'The identity provider described another user than the one signed in; start the sign-in again.');
    return claims as Record<string, unknown>;
  }
}
