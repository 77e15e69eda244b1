import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';

/**
 * A tenant's `allowedIpRanges`: sign-in, refresh and every request with the tenant's
 * credentials come only from those networks. The test's requests come from 127.0.0.1.
 */
describe('tenant allowed IP ranges', () => {
  const env = isolatedEnv('ipranges');
  const stack = new Stack(env);
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let tenantId: string;

  const login = (email = 'user@fenced.test') => anonymous('POST', '/api/v1/auth/login', { body: { tenant: 'fenced-co', email, password: PASSWORD } });
  // Waiting for sign-ins to change is done as another user: the sessions it starts meanwhile
  // must not push the user's own session out (maxConcurrentSessions).
  const probe = () => login('prober@fenced.test');
  // Refreshes read the tenant through the identity service's short cache, sign-ins do not: a
  // change of ranges is awaited for refreshes too, with the prober's own session (its token
  // turns on every refresh that succeeds meanwhile).
  let proberRefreshToken = '';
  const probeRefresh = async () => {
    const res = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: proberRefreshToken } });
    if (res.status === 200) proberRefreshToken = res.body.refreshToken;
    return res;
  };
  const setRanges = async (allowedIpRanges: string[]) => {
    const res = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { allowedIpRanges } });
    expect(res.status).toBe(200);
    expect(res.body.tenant.settings.allowedIpRanges).toEqual(allowedIpRanges);
  };
  const until = <T extends { status: number }>(what: string, call: () => Promise<T>, status: number) =>
    eventually(call, (r) => r.status === status, { timeoutMs: 20_000, intervalMs: 100, what });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'fenced-co', name: 'Fenced', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    for (const email of ['user@fenced.test', 'prober@fenced.test']) {
      const user = await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: email, password: PASSWORD, roles: ['viewer'] } });
      expect(user.status).toBe(201);
    }
  }, 120_000);

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('refuses sign-in, refresh and requests from outside the ranges, and serves them again from inside', async () => {
    const session = await until('a first sign-in', login, 200);
    proberRefreshToken = (await until("the prober's sign-in", probe, 200)).body.refreshToken;
    const user = httpClient(stack.gatewayUrl, session.body.accessToken);
    expect((await user('GET', `/api/v1/tenants/${tenantId}`)).status).toBe(200);

    await setRanges(['10.0.0.0/8', '2001:db8::/32']);
    const refused = await until('requests from 127.0.0.1 refused', () => user('GET', `/api/v1/tenants/${tenantId}`), 403);
    expect(refused.body).toMatchObject({ code: 'forbidden', detail: expect.stringContaining('allowed IP ranges') });
    const signIn = await until('sign-in from 127.0.0.1 refused', probe, 403);
    expect(signIn.body.detail).toContain("tenant's IP ranges");
    await until('refresh from 127.0.0.1 refused', probeRefresh, 403);
    // A refused refresh leaves the session as it was: its token still refreshes from inside.
    const outside = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: session.body.refreshToken } });
    expect(outside.body).toMatchObject({ status: 403, code: 'forbidden' });
    // A refused sign-in is no failed attempt: five wrong passwords from outside do not lock
    // the account (the plan allows 5 failures), as the sign-in from inside below shows.
    for (let i = 0; i < 5; i++) {
      const wrong = await anonymous('POST', '/api/v1/auth/login', { body: { tenant: 'fenced-co', email: 'user@fenced.test', password: 'not the password at all' } });
      expect(wrong.status).toBe(403);
    }
    // The operator (a platform principal) is bound by no tenant's ranges.
    expect((await operator('GET', `/api/v1/tenants/${tenantId}`)).status).toBe(200);

    await setRanges(['10.0.0.0/8', '127.0.0.0/8']);
    await until('requests from 127.0.0.1 served again', () => user('GET', `/api/v1/tenants/${tenantId}`), 200);
    await until('sign-in from 127.0.0.1 allowed again', probe, 200);
    await until('refresh from 127.0.0.1 allowed again', probeRefresh, 200);
    expect((await login()).status).toBe(200);
    expect((await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: session.body.refreshToken } })).status).toBe(200);
  });

  it('refuses a range with host bits set, naming the field, and changes nothing', async () => {
    const before = await operator('GET', `/api/v1/tenants/${tenantId}`);
    const res = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { allowedIpRanges: ['127.0.0.0/8', '10.0.0.1/8'] } });
    expect(res.status).toBe(400);
    expect(res.body.errors).toEqual([expect.objectContaining({ field: 'allowedIpRanges.1' })]);
    expect((await operator('GET', `/api/v1/tenants/${tenantId}`)).body.version).toBe(before.body.version);
  });
});
