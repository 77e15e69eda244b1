import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';
import { Authenticator } from './support/authenticator';

const PASSWORD = 'correct horse battery staple';
/**
 * The tenant's step-up window in this test: short enough to wait out on the wall clock, long enough
 * that a loaded machine still does the steps a fresh token must pass within it (the minimum is 5 s).
 */
const WINDOW_SECONDS = 12;

interface Claims {
  sub: string;
  sid: string;
  auth_time: number;
  amr: string[];
}
const claimsOf = (token: string): Claims => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));

/** Step-up end to end: real auth, tenant, audit and gateway processes; the window is waited out on the wall clock. */
describe('step-up: sensitive self-service needs a recent authentication', () => {
  const env = isolatedEnv('step-up');
  const stack = new Stack(env);
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let tenant: { id: string; slug: string };
  const as = (token: string) => httpClient(stack.gatewayUrl, token);

  const createUser = async (email: string, roles: string[]) => {
    const res = await operator('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email, name: email, password: PASSWORD, roles } });
    expect(res.status).toBe(201);
    return res.body.id as string;
  };
  const login = (email: string, second: { totp?: string; recoveryCode?: string } = {}) =>
    anonymous('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email, password: PASSWORD, ...second } });
  const signIn = async (email: string) => {
    const res = await login(email);
    expect(res.status).toBe(200);
    return res.body as { accessToken: string; refreshToken: string };
  };
  /** Until the wall clock is past the token's auth_time plus the window (by a whole second, as the gateway counts). */
  const outlive = (token: string) =>
    eventually(
      async () => Math.floor(Date.now() / 1000),
      (now) => now > claimsOf(token).auth_time + WINDOW_SECONDS,
      { timeoutMs: (WINDOW_SECONDS + 5) * 1000, intervalMs: 100, what: 'the step-up window to pass' },
    );
  const expectStepUp = (res: { status: number; body: Record<string, unknown>; headers: Headers }) => {
    expect({ status: res.status, code: res.body.code }).toEqual({ status: 401, code: 'step_up_required' });
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(String(res.body.detail)).toMatch(/reauthenticate/);
    expect(res.headers.get('www-authenticate')).toMatch(new RegExp(`error="insufficient_user_authentication".*max_age=${WINDOW_SECONDS}`));
  };
  type TrailItem = { event: { type: string; aggregateId: string; actor: { kind: string; id: string }; data: Record<string, unknown> } };
  const trail = async (type: string, ready: (items: TrailItem[]) => boolean) => {
    const res = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${tenant.id}&type=${type}`),
      (r) => r.status === 200 && Array.isArray(r.body.items) && ready(r.body.items),
      { what: `${type} audit entries` },
    );
    return res.body.items as TrailItem[];
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'step-co', name: 'Step Co', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenant = { id: created.body.tenant.id, slug: 'step-co' };
    await eventually(
      () => operator('GET', `/api/v1/tenants/${tenant.id}?consistentWith=${created.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, what: 'the tenant in the read model' },
    );
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('the window is a tenant setting: 600 s unless set, at least 5 s', async () => {
    const before = await operator('GET', `/api/v1/tenants/${tenant.id}`);
    expect(before.body.settings.stepUpWindowSeconds).toBe(600);
    const tooSmall = await operator('PATCH', `/api/v1/tenants/${tenant.id}/settings`, { body: { stepUpWindowSeconds: 4 } });
    expect(tooSmall.status).toBe(400);
    expect(JSON.stringify(tooSmall.body.errors)).toContain('stepUpWindowSeconds');
    const set = await operator('PATCH', `/api/v1/tenants/${tenant.id}/settings`, { body: { stepUpWindowSeconds: WINDOW_SECONDS } });
    expect(set.status).toBe(200);
    const after = await eventually(
      () => operator('GET', `/api/v1/tenants/${tenant.id}?consistentWith=${set.body.position}`),
      (r) => r.status === 200,
      { what: 'the setting in the read model' },
    );
    expect(after.body.settings.stepUpWindowSeconds).toBe(WINDOW_SECONDS);
  });

  it('access tokens carry auth_time and amr; an old one cannot enrol MFA, change the password or create a key; re-authenticating can', async () => {
    const userId = await createUser('ada@step.test', ['developer']);
    const adminId = await createUser('root@step.test', ['tenant_admin']);
    const first = await signIn('ada@step.test');
    const admin = await signIn('root@step.test');
    const claims = claimsOf(first.accessToken);
    expect(claims.amr).toEqual(['pwd']);
    expect(Math.abs(claims.auth_time - Date.now() / 1000)).toBeLessThan(60);
    const stale = as(first.accessToken);
    // The gateway learns the window from the tenant's events: wait until a stale token is refused there.
    await outlive(first.accessToken);
    // The administrator signed in just after: its token must be old too for the reset below.
    await outlive(admin.accessToken);
    const refused = await eventually(() => stale('POST', '/api/v1/auth/mfa/totp'), (r) => r.status !== 201, {
      timeoutMs: 20_000,
      intervalMs: 200,
      what: 'the step-up window to reach the gateway',
    });
    expectStepUp(refused);
    expectStepUp(await stale('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: '123456' } }));
    expectStepUp(await stale('DELETE', '/api/v1/auth/mfa/totp', { body: { code: '123456' } }));
    expectStepUp(await stale('POST', '/api/v1/auth/password', { body: { currentPassword: PASSWORD, newPassword: 'another long enough passphrase' } }));
    const expiresAt = new Date(Date.now() + 86_400_000).toISOString();
    expectStepUp(await stale('POST', `/api/v1/tenants/${tenant.id}/api-keys`, { body: { name: 'ci', permissions: ['tenants:read'], expiresAt } }));
    expectStepUp(await as(admin.accessToken)('POST', `/api/v1/tenants/${tenant.id}/users/${userId}/mfa/reset`));
    // Other routes are not affected by an old sign-in.
    expect((await stale('GET', `/api/v1/tenants/${tenant.id}`)).status).toBe(200);
    // Nothing was changed by the refusals: the old password still signs in, no key exists.
    expect((await login('ada@step.test')).status).toBe(200);
    expect((await operator('GET', `/api/v1/tenants/${tenant.id}/api-keys`)).body.items).toEqual([]);

    // A refresh proves only that the refresh token is held: the session's auth_time carries over.
    const refreshed = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: first.refreshToken } });
    expect(refreshed.status).toBe(200);
    expect(claimsOf(refreshed.body.accessToken)).toMatchObject({ sid: claims.sid, auth_time: claims.auth_time, amr: ['pwd'] });
    expectStepUp(await as(refreshed.body.accessToken)('POST', '/api/v1/auth/mfa/totp'));

    // Re-authentication: a wrong password is refused (and changes nothing), the right one renews the session's auth_time.
    const session = as(refreshed.body.accessToken);
    const wrong = await session('POST', '/api/v1/auth/reauthenticate', { body: { password: 'not the password at all' } });
    expect({ status: wrong.status, code: wrong.body.code }).toEqual({ status: 401, code: 'invalid_credentials' });
    expect((await session('POST', '/api/v1/auth/reauthenticate', { body: {} })).status).toBe(400);
    const again = await session('POST', '/api/v1/auth/reauthenticate', { body: { password: PASSWORD } });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ tokenType: 'Bearer', accessToken: expect.any(String), expiresIn: expect.any(Number) });
    const renewed = claimsOf(again.body.accessToken);
    expect(renewed).toMatchObject({ sid: claims.sid, sub: userId, amr: ['pwd'] });
    expect(renewed.auth_time).toBeGreaterThan(claims.auth_time + WINDOW_SECONDS);
    expect(new Date(again.body.authTime).getTime()).toBe(renewed.auth_time * 1000);

    const fresh = as(again.body.accessToken);
    const started = await fresh('POST', '/api/v1/auth/mfa/totp');
    expect(started.status).toBe(201);
    const app = new Authenticator(started.body.secret);
    expect((await fresh('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: await app.next() } })).status).toBe(200);
    // The token from before the re-authentication stays stale.
    expectStepUp(await session('POST', '/api/v1/auth/mfa/totp'));

    // The session's new auth_time is what the next refresh carries.
    const later = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: refreshed.body.refreshToken } });
    expect(later.status).toBe(200);
    expect(claimsOf(later.body.accessToken).auth_time).toBe(renewed.auth_time);

    // An API key has no person behind it: it never passes a step-up route.
    const key = await fresh('POST', `/api/v1/tenants/${tenant.id}/api-keys`, { body: { name: 'ci', permissions: ['api_keys:write', 'tenants:read'], expiresAt } });
    expect(key.status).toBe(201);
    const byKey = await as(key.body.secret)('POST', `/api/v1/tenants/${tenant.id}/api-keys`, { body: { name: 'ci-2', permissions: ['tenants:read'], expiresAt } });
    expect({ status: byKey.status, code: byKey.body.code }).toEqual({ status: 403, code: 'forbidden' });
    expect((await as(key.body.secret)('POST', '/api/v1/auth/reauthenticate', { body: { password: PASSWORD } })).status).toBe(403);

    // With a factor enrolled, re-authentication needs a code as well; it then says mfa.
    await outlive(again.body.accessToken);
    const withFactor = as(later.body.accessToken);
    expectStepUp(await withFactor('DELETE', '/api/v1/auth/mfa/totp', { body: { code: '123456' } }));
    const noCode = await withFactor('POST', '/api/v1/auth/reauthenticate', { body: { password: PASSWORD } });
    expect({ status: noCode.status, code: noCode.body.code }).toEqual({ status: 401, code: 'mfa_required' });
    const withCode = await withFactor('POST', '/api/v1/auth/reauthenticate', { body: { password: PASSWORD, totp: await app.next() } });
    expect(withCode.status).toBe(200);
    expect(claimsOf(withCode.body.accessToken).amr).toEqual(['mfa', 'otp', 'pwd']);
    const signedInWithCode = await login('ada@step.test', { totp: await app.next() });
    expect(signedInWithCode.status).toBe(200);
    expect(claimsOf(signedInWithCode.body.accessToken).amr).toEqual(['mfa', 'otp', 'pwd']);

    const reauthenticated = await trail('auth.session.reauthenticated', (items) => items.length >= 2);
    expect(reauthenticated.map((r) => r.event.data.amr)).toEqual(expect.arrayContaining([['pwd'], ['mfa', 'otp', 'pwd']]));
    expect(reauthenticated.every((r) => r.event.aggregateId === claims.sid && r.event.actor.id === userId)).toBe(true);
    void adminId;
  });

  it('an administrator resets a user\'s MFA: the factor and the user\'s sessions end, audited with the administrator as actor', async () => {
    const [{ id: userId }] = (await operator('GET', `/api/v1/tenants/${tenant.id}/users`)).body.items.filter((u: { email: string }) => u.email === 'ada@step.test');
    const [{ id: adminId }] = (await operator('GET', `/api/v1/tenants/${tenant.id}/users`)).body.items.filter((u: { email: string }) => u.email === 'root@step.test');
    // Ada has a factor: the password alone does not sign her in.
    expect((await login('ada@step.test')).body.code).toBe('mfa_required');
    const viewerId = await createUser('vic@step.test', ['viewer']);
    const viewer = as((await signIn('vic@step.test')).accessToken);
    expect((await viewer('POST', `/api/v1/tenants/${tenant.id}/users/${userId}/mfa/reset`)).status).toBe(403);

    const admin = as((await signIn('root@step.test')).accessToken);
    const own = await admin('POST', `/api/v1/tenants/${tenant.id}/users/${adminId}/mfa/reset`);
    expect({ status: own.status, code: own.body.code }).toEqual({ status: 403, code: 'forbidden' });
    expect((await admin('POST', `/api/v1/tenants/${tenant.id}/users/${viewerId}/mfa/reset`)).status).toBe(404);

    const adaSessions = (await operator('GET', `/api/v1/tenants/${tenant.id}/sessions?userId=${userId}`)).body.items.length;
    expect(adaSessions).toBeGreaterThan(0);
    const reset = await admin('POST', `/api/v1/tenants/${tenant.id}/users/${userId}/mfa/reset`);
    expect(reset.status).toBe(200);
    expect(reset.body).toMatchObject({ reset: true, sessionsRevoked: adaSessions, position: expect.any(Number) });
    expect((await operator('GET', `/api/v1/tenants/${tenant.id}/sessions?userId=${userId}`)).body.items).toEqual([]);
    expect((await admin('POST', `/api/v1/tenants/${tenant.id}/users/${userId}/mfa/reset`)).status).toBe(404);

    // The password alone signs her in again; she may enrol a factor of her own.
    const back = await login('ada@step.test');
    expect(back.status).toBe(200);
    expect((await as(back.body.accessToken)('POST', '/api/v1/auth/mfa/totp')).status).toBe(201);

    const audited = await trail('auth.user.mfa_reset', (items) => items.length >= 1);
    expect(audited).toHaveLength(1);
    expect(audited[0]!.event).toMatchObject({ aggregateId: userId, actor: { kind: 'user', id: adminId }, data: { method: 'totp', sessionsRevoked: adaSessions } });
    const revoked = await trail('auth.session.revoked', (items) => items.filter((r) => r.event.data.reason === 'mfa_reset').length >= adaSessions);
    expect(revoked.filter((r) => r.event.data.reason === 'mfa_reset').every((r) => r.event.actor.id === adminId)).toBe(true);
  });
});
