import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, Stack, waitForReady } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
const CLIENT_ID = 'keel-sso-spec';
const CLIENT_SECRET = `client-secret-${randomBytes(12).toString('hex')}`;
const CALLBACK_PATH = '/api/v1/auth/sso/callback';
const APP_REDIRECT = 'https://console.alpha.test/signed-in';

/** The people at the identity provider (claims as its UserInfo endpoint releases them). */
const ACCOUNTS = {
  alice: { email: 'alice@alpha.test', email_verified: true, name: 'Alice Admin', groups: ['keel-admins', 'ml-research'] },
  bob: { email: 'bob@alpha.test', email_verified: true, name: 'Bob', groups: ['staff'] },
  dave: { email: 'dave@alpha.test', email_verified: true, name: 'Dave', groups: [] },
  eve: { email: 'eve@alpha.test', email_verified: false, name: 'Eve', groups: [] },
  carol: { email: 'carol@tiny.test', email_verified: true, name: 'Carol', groups: [] },
};

/**
 * A real OpenID Connect provider (oidc-provider, ESM-only, so in its own Node process): one
 * confidential client with PKCE required, and an interaction endpoint that signs in the account
 * named in the form's `login` (or refuses the sign-in for `deny`) and grants consent.
 */
const PROVIDER_SCRIPT = `
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const { OIDC_PORT, OIDC_CLIENT, OIDC_ACCOUNTS } = process.env;
const accounts = JSON.parse(OIDC_ACCOUNTS);
const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const provider = new Provider('http://127.0.0.1:' + OIDC_PORT, {
  clients: [JSON.parse(OIDC_CLIENT)],
  jwks: { keys: [{ ...key, kid: 'sso-spec', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: ['sso-spec-cookies'] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => '/interaction/' + interaction.uid },
  findAccount: (ctx, id) => accounts[id] && { accountId: id, claims: () => ({ sub: id, ...accounts[id] }) },
});
const oidc = provider.callback();
createServer(async (req, res) => {
  if (req.method !== 'POST' || !req.url.startsWith('/interaction/')) return oidc(req, res);
  try {
    let body = '';
    for await (const chunk of req) body += chunk;
    const login = new URLSearchParams(body).get('login');
    const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
    let result;
    if (login === 'deny') {
      result = { error: 'access_denied', error_description: 'the user refused' };
    } else if (prompt.name === 'login') {
      result = { login: { accountId: login } };
    } else {
      const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      result = { consent: { grantId: await grant.save() } };
    }
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  } catch (error) {
    res.statusCode = 500;
    res.end(String(error));
  }
}).listen(Number(OIDC_PORT), '127.0.0.1');
`;

/** A browser, as far as the flow needs one: cookies (by name, as one host shares them across ports) and no automatic redirects. */
class Browser {
  private readonly cookies = new Map<string, string>();

  async fetch(url: string | URL, init: { method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<Response> {
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...init.headers, ...(cookie ? { cookie } : {}) } });
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';');
      const at = pair!.indexOf('=');
      const [name, value] = [pair!.slice(0, at).trim(), pair!.slice(at + 1)];
      const expired = attributes.some((a) => /^\s*max-age=0\s*$/i.test(a) || (/^\s*expires=/i.test(a) && Date.parse(a.split('=')[1]!) < Date.now()));
      if (expired || !value) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return res;
  }
}

async function json(res: Response): Promise<any> {
  const text = await res.text();
  return text ? JSON.parse(text) : undefined;
}

const claimsOf = (accessToken: string) => JSON.parse(Buffer.from(accessToken.split('.')[1]!, 'base64url').toString());

/** Single sign-on end to end: real auth, tenant, audit and gateway processes and a real OpenID provider. */
describe('single sign-on (OpenID Connect)', () => {
  const env = isolatedEnv('sso');
  // The provider runs on http://127.0.0.1: allowed only with the development setting (test/sso-ssrf.spec.ts: what is refused).
  const stack = new Stack(env, { KEEL_SSO_ALLOW_HTTP_LOOPBACK: 'true' });
  let idp: ChildProcess;
  const idpOutput: string[] = [];
  let issuer: string;
  let operator: ReturnType<typeof httpClient>;
  let admin: ReturnType<typeof httpClient>;
  const tenants: Record<string, string> = {};
  let providerId: string;
  let mlTeam: string;

  const startPath = (slug: string, id = providerId, redirectUri?: string) =>
    `/api/v1/auth/sso/${slug}/${id}/start${redirectUri ? `?redirectUri=${encodeURIComponent(redirectUri)}` : ''}`;

  /** Drives the browser from Keel's start through the provider's sign-in and consent, up to (not into) Keel's callback. */
  async function toCallback(browser: Browser, path: string, login: string): Promise<URL> {
    let res = await browser.fetch(`${stack.gatewayUrl}${path}`);
    for (let hop = 0; hop < 12; hop++) {
      if (res.status !== 302 && res.status !== 303) throw new Error(`${res.url} answered ${res.status}: ${await res.text()}`);
      const next = new URL(res.headers.get('location')!, res.url);
      if (next.pathname === CALLBACK_PATH) return next;
      res = next.pathname.startsWith('/interaction/')
        ? await browser.fetch(next, { method: 'POST', body: new URLSearchParams({ login }).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } })
        : await browser.fetch(next);
    }
    throw new Error('the sign-in did not come back to Keel');
  }

  async function signIn(slug: string, login: string, browser = new Browser()) {
    const res = await browser.fetch(await toCallback(browser, startPath(slug), login));
    return { status: res.status, headers: res.headers, body: await json(res) };
  }

  const providerBody = (overrides: Record<string, unknown> = {}) => ({
    type: 'oidc',
    name: 'Corp IdP',
    config: { issuer, clientId: CLIENT_ID, scopes: ['groups'] },
    clientSecret: CLIENT_SECRET,
    mapping: {
      roleClaim: 'groups',
      roleMapping: { 'keel-admins': 'tenant_admin', 'keel-devs': 'developer' },
      defaultRoles: ['viewer'],
      teamClaim: 'groups',
      teamMapping: { 'ml-research': { teamId: mlTeam, role: 'developer' } },
    },
    redirectUris: [APP_REDIRECT],
    ...overrides,
  });

  type AuditItem = { event: { actor: Record<string, string>; data: Record<string, unknown> } };
  /**
   * A tenant's audit entries of one type, once `ready` holds for them (the audit consumer fills
   * the ledger asynchronously); the caller then asserts on exactly what is there.
   */
  const auditOf = async (tenantId: string, type: string, ready: (items: AuditItem[]) => boolean = (items) => items.length >= 1) => {
    const res = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${tenantId}&type=${type}`),
      (r) => r.status === 200 && Array.isArray(r.body.items) && ready(r.body.items),
      { what: `${type} audit entries of tenant ${tenantId}` },
    );
    return res.body.items as AuditItem[];
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    for (const [slug, extra] of [['alpha', {}], ['bravo', {}], ['tiny-co', { plan: 'custom', quotas: { maxUsers: 1, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 600 } }]] as const) {
      const res = await operator('POST', '/api/v1/tenants', { body: { slug, name: slug, plan: 'professional', ...extra } });
      expect(res.status).toBe(201);
      tenants[slug] = res.body.tenant.id;
      // Users are created only once the tenant is in the read model (asked again after a consistency_timeout).
      const read = await eventually(
        () => operator('GET', `/api/v1/tenants/${res.body.tenant.id}?consistentWith=${res.body.position}`),
        (r) => r.status === 200,
        { timeoutMs: 30_000, intervalMs: 100, what: `tenant ${slug} in the read model` },
      );
      expect(read.status).toBe(200);
    }
    for (const [slug, email] of [['alpha', 'admin@alpha.test'], ['bravo', 'admin@bravo.test'], ['alpha', 'dave@alpha.test'], ['alpha', 'eve@alpha.test'], ['tiny-co', 'admin@tiny.test']]) {
      const res = await operator('POST', `/api/v1/tenants/${tenants[slug!]}/users`, { body: { email, name: email, password: PASSWORD, roles: ['tenant_admin'] } });
      expect(res.status).toBe(201);
    }
    const login = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'alpha', email: 'admin@alpha.test', password: PASSWORD } });
    admin = httpClient(stack.gatewayUrl, login.body.accessToken);
    mlTeam = (await admin('POST', `/api/v1/tenants/${tenants.alpha}/teams`, { body: { name: 'ML research' } })).body.id;

    const port = await freePort();
    issuer = `http://127.0.0.1:${port}`;
    const client = { client_id: CLIENT_ID, client_secret: CLIENT_SECRET, redirect_uris: [`${stack.gatewayUrl}${CALLBACK_PATH}`], grant_types: ['authorization_code'], response_types: ['code'] };
    // Resolved from the repository root, where oidc-provider is installed.
    idp = spawn(process.execPath, ['--input-type=module', '--eval', PROVIDER_SCRIPT], {
      cwd: join(__dirname, '..'),
      env: { ...process.env, OIDC_PORT: String(port), OIDC_CLIENT: JSON.stringify(client), OIDC_ACCOUNTS: JSON.stringify(ACCOUNTS) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Kept for a failure's message; the provider's development-mode notices would only be noise.
    idp.stdout!.on('data', (chunk: Buffer) => idpOutput.push(chunk.toString()));
    idp.stderr!.on('data', (chunk: Buffer) => idpOutput.push(chunk.toString()));
    await waitForReady(`${issuer}/.well-known/openid-configuration`, 30_000, idp).catch((error: Error) => {
      throw new Error(`the OpenID provider did not start: ${error.message}\n${idpOutput.join('')}`);
    });
  });

  afterAll(async () => {
    idp?.kill();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('manages a tenant\'s identity providers, checking them when saved and never answering the client secret', async () => {
    const a = tenants.alpha!;
    const created = await admin('POST', `/api/v1/tenants/${a}/identity-providers`, { body: providerBody() });
    expect(created.status).toBe(201);
    providerId = created.body.id;
    expect(created.headers.get('location')).toBe(`/api/v1/tenants/${a}/identity-providers/${providerId}`);
    expect(created.body).toMatchObject({ tenantId: a, type: 'oidc', config: { issuer, clientId: CLIENT_ID }, mapping: { defaultRoles: ['viewer'], emailClaim: 'email' }, version: 1 });
    const read = await admin('GET', `/api/v1/tenants/${a}/identity-providers/${providerId}`);
    expect(read.headers.get('etag')).toBe('"1"');
    const listed = await admin('GET', `/api/v1/tenants/${a}/identity-providers`);
    expect(listed.body.items.map((p: { id: string }) => p.id)).toEqual([providerId]);
    for (const res of [created, read, listed]) {
      expect(JSON.stringify(res.body)).not.toContain(CLIENT_SECRET);
      expect(JSON.stringify(res.body)).not.toMatch(/secret/i);
    }

    const refused = [
      [providerBody({ mapping: { roleClaim: 'groups', roleMapping: { root: 'platform_admin' } } }), 'mapping.roleMapping.root'],
      [providerBody({ config: { issuer: 'http://idp.example.test', clientId: CLIENT_ID } }), 'config.issuer'],
      [providerBody({ config: { issuer: 'http://127.0.0.1:1', clientId: CLIENT_ID } }), 'config.issuer'],
      [providerBody({ mapping: { teamClaim: 'groups', teamMapping: { x: { teamId: '01890a5d-ac96-774b-bcce-b302099a8057', role: 'viewer' } } } }), 'mapping.teamMapping.x.teamId'],
    ] as const;
    for (const [body, field] of refused) {
      const res = await admin('POST', `/api/v1/tenants/${a}/identity-providers`, { body });
      expect({ field, status: res.status, code: res.body.code }).toEqual({ field, status: 400, code: 'validation_failed' });
      expect(res.body.errors.map((e: { field: string }) => e.field)).toContain(field);
    }
    const bravoAdmin = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'bravo', email: 'admin@bravo.test', password: PASSWORD } });
    const other = httpClient(stack.gatewayUrl, bravoAdmin.body.accessToken);
    expect((await other('GET', `/api/v1/tenants/${a}/identity-providers/${providerId}`)).status).toBe(404);
    expect((await other('GET', `/api/v1/tenants/${a}/identity-providers`)).status).toBe(404);
  });

  it('signs a new user in, provisioning them in the tenant with the mapped roles and team role', async () => {
    const first = await signIn('alpha', 'alice');
    expect(first.status).toBe(200);
    expect(first.headers.get('cache-control')).toBe('no-store');
    expect(first.body).toMatchObject({ tokenType: 'Bearer', expiresIn: 900, accessToken: expect.any(String), refreshToken: expect.any(String) });
    const claims = claimsOf(first.body.accessToken);
    expect(claims).toMatchObject({ tid: tenants.alpha, roles: ['tenant_admin'] });

    const user = await admin('GET', `/api/v1/tenants/${tenants.alpha}/users/${claims.sub}`);
    expect(user.body).toMatchObject({ email: 'alice@alpha.test', name: 'Alice Admin', roles: ['tenant_admin'], status: 'active' });
    const grants = await admin('GET', `/api/v1/tenants/${tenants.alpha}/role-assignments?userId=${claims.sub}`);
    expect(grants.body.items).toEqual([expect.objectContaining({ role: 'developer', teamId: mlTeam })]);
    // The token works, and refreshes like any other.
    expect((await httpClient(stack.gatewayUrl, first.body.accessToken)('GET', `/api/v1/tenants/${tenants.alpha}/users`)).status).toBe(200);
    expect((await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/refresh', { body: { refreshToken: first.body.refreshToken } })).status).toBe(200);
    // No password was set: the password sign-in stays closed to this user.
    expect((await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'alpha', email: 'alice@alpha.test', password: PASSWORD } })).status).toBe(401);

    const again = await signIn('alpha', 'alice');
    expect(again.status).toBe(200);
    expect(claimsOf(again.body.accessToken).sub).toBe(claims.sub);
    const users = await admin('GET', `/api/v1/tenants/${tenants.alpha}/users`);
    expect(users.body.items.filter((u: { email: string }) => u.email === 'alice@alpha.test')).toHaveLength(1);
    expect((await admin('GET', `/api/v1/tenants/${tenants.alpha}/role-assignments?userId=${claims.sub}`)).body.items).toHaveLength(1);
  });

  it('gives unmapped users the default roles, and roles and team grants follow the mapping at the next sign-in', async () => {
    const bob = await signIn('alpha', 'bob');
    expect(claimsOf(bob.body.accessToken).roles).toEqual(['viewer']);

    const current = await admin('GET', `/api/v1/tenants/${tenants.alpha}/identity-providers/${providerId}`);
    const { clientSecret: _, ...unchangedSecret } = providerBody({ mapping: { roleClaim: 'groups', roleMapping: { staff: 'developer', 'keel-admins': 'tenant_admin' }, defaultRoles: [] } });
    const stale = await admin('PUT', `/api/v1/tenants/${tenants.alpha}/identity-providers/${providerId}`, { body: unchangedSecret, headers: { 'if-match': '"99"' } });
    expect(stale.status).toBe(412);
    const updated = await admin('PUT', `/api/v1/tenants/${tenants.alpha}/identity-providers/${providerId}`, { body: unchangedSecret, headers: { 'if-match': current.headers.get('etag')! } });
    expect(updated.status).toBe(200);
    expect(updated.body.version).toBe(2);

    // Signing in still works: omitting the secret kept it.
    const bobAgain = await signIn('alpha', 'bob');
    expect(claimsOf(bobAgain.body.accessToken).roles).toEqual(['developer']);
    const alice = await signIn('alpha', 'alice');
    const aliceId = claimsOf(alice.body.accessToken).sub;
    expect((await admin('GET', `/api/v1/tenants/${tenants.alpha}/role-assignments?userId=${aliceId}`)).body.items).toEqual([]);
    // No default role any more: a user none of whose groups is mapped is refused.
    const dave = await signIn('alpha', 'dave');
    expect(dave.status).toBe(403);
    expect(dave.body.code).toBe('forbidden');

    const restored = await admin('PUT', `/api/v1/tenants/${tenants.alpha}/identity-providers/${providerId}`, { body: providerBody() });
    expect(restored.status).toBe(200);
  });

  it('links an existing user when the provider vouches for the email, and refuses to otherwise', async () => {
    const users = (await admin('GET', `/api/v1/tenants/${tenants.alpha}/users`)).body.items as { id: string; email: string }[];
    const dave = await signIn('alpha', 'dave');
    expect(dave.status).toBe(200);
    expect(claimsOf(dave.body.accessToken).sub).toBe(users.find((u) => u.email === 'dave@alpha.test')!.id);
    const eve = await signIn('alpha', 'eve');
    expect(eve.status).toBe(409);
    expect(eve.headers.get('content-type')).toContain('application/problem+json');
    expect(eve.body).toMatchObject({ code: 'conflict', detail: expect.stringContaining('email_verified') });
  });

  it('sends the browser on to an allowed redirect URI with the tokens in the fragment, and refuses any other', async () => {
    const browser = new Browser();
    const res = await browser.fetch(await toCallback(browser, startPath('alpha', providerId, APP_REDIRECT), 'alice'));
    expect(res.status).toBe(302);
    const location = new URL(res.headers.get('location')!);
    expect(`${location.origin}${location.pathname}`).toBe(APP_REDIRECT);
    const fragment = new URLSearchParams(location.hash.slice(1));
    expect(claimsOf(fragment.get('accessToken')!).tid).toBe(tenants.alpha);
    expect(fragment.get('refreshToken')).toEqual(expect.any(String));

    const elsewhere = await new Browser().fetch(`${stack.gatewayUrl}${startPath('alpha', providerId, 'https://attacker.test/steal')}`);
    expect(elsewhere.status).toBe(400);
    expect((await json(elsewhere)).errors).toEqual([expect.objectContaining({ field: 'redirectUri' })]);
  });

  it('refuses a tampered state, a replayed callback, another browser\'s callback, a refused sign-in and another tenant\'s provider', async () => {
    const problem = async (res: Response, status: number, code: string) => {
      expect(res.status).toBe(status);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect((await json(res)).code).toBe(code);
    };
    const browser = new Browser();
    const callback = await toCallback(browser, startPath('alpha'), 'alice');
    const tampered = new URL(callback);
    tampered.searchParams.set('state', `${callback.searchParams.get('state')!.slice(0, -2)}xx`);
    await problem(await browser.fetch(tampered), 401, 'invalid_token');
    expect((await browser.fetch(callback)).status).toBe(200);
    await problem(await browser.fetch(callback), 401, 'invalid_token');

    const victim = new Browser();
    const attackers = await toCallback(new Browser(), startPath('alpha'), 'bob');
    await problem(await victim.fetch(attackers), 401, 'invalid_token');

    const deniedBrowser = new Browser();
    await problem(await deniedBrowser.fetch(await toCallback(deniedBrowser, startPath('alpha'), 'deny')), 401, 'invalid_credentials');

    await problem(await new Browser().fetch(`${stack.gatewayUrl}${startPath('bravo')}`), 404, 'not_found');
    await problem(await new Browser().fetch(`${stack.gatewayUrl}${startPath('no-such-tenant')}`), 404, 'not_found');
    await problem(await new Browser().fetch(`${stack.gatewayUrl}${CALLBACK_PATH}`), 400, 'validation_failed');
  });

  it('respects the plan\'s maxUsers when provisioning', async () => {
    const tiny = tenants['tiny-co']!;
    const created = await operator('POST', `/api/v1/tenants/${tiny}/identity-providers`, { body: providerBody({ mapping: {} }) });
    expect(created.status).toBe(201);
    const browser = new Browser();
    const res = await browser.fetch(await toCallback(browser, startPath('tiny-co', created.body.id), 'carol'));
    expect(res.status).toBe(409);
    expect((await json(res)).code).toBe('quota_exceeded');
  });

  it('records every change as an event with its actor, never with the secret, and stops signing in once the provider is deleted', async () => {
    const a = tenants.alpha!;
    expect((await admin('DELETE', `/api/v1/tenants/${a}/identity-providers/${providerId}`)).status).toBe(204);
    expect((await new Browser().fetch(`${stack.gatewayUrl}${startPath('alpha')}`)).status).toBe(404);

    const adminId = claimsOf((await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'alpha', email: 'admin@alpha.test', password: PASSWORD } })).body.accessToken).sub;
    for (const type of ['auth.identity_provider.created', 'auth.identity_provider.deleted']) {
      const [entry] = await auditOf(a, type);
      expect(entry!.event.actor).toMatchObject({ kind: 'user', id: adminId });
    }
    expect(await auditOf(a, 'auth.identity_provider.updated', (items) => items.length >= 2)).toHaveLength(2);
    const byProvider = (items: AuditItem[]) => items.filter((e) => e.event.actor.id === `identity-provider:${providerId}`);
    const provisioned = byProvider(await auditOf(a, 'auth.user.created', (items) => byProvider(items).length >= 2));
    expect(provisioned.map((e) => e.event.data.email).sort()).toEqual(['alice@alpha.test', 'bob@alpha.test']);
    const linked = await auditOf(a, 'auth.external_identity.linked', (items) => items.length >= 3);
    expect(linked.map((e) => e.event.data.provisioned).sort()).toEqual([false, true, true]);
    const signedIn = await auditOf(a, 'auth.external_identity.signed_in', (items) => items.length >= 5);
    expect(signedIn[0]!.event.actor).toMatchObject({ kind: 'user', tenantId: a });
    const all = await operator('GET', `/api/v1/audit/events?tenantId=${a}&limit=500`);
    expect(JSON.stringify(all.body)).not.toContain(CLIENT_SECRET);
  });
});
