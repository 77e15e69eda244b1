import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
const DAY_MS = 86_400_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Credentials follow their owner: real auth, tenant, audit and gateway processes. */
describe('credentials follow their owner', () => {
  const env = isolatedEnv('credentials');
  const stack = new Stack(env);
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let admin: ReturnType<typeof httpClient>;
  let tenantId = '';
  const slug = 'creds-co';
  const t = () => `/api/v1/tenants/${tenantId}`;

  const as = (token: string) => httpClient(stack.gatewayUrl, token);
  const login = async (email: string) => {
    const res = await anonymous('POST', '/api/v1/auth/login', { body: { tenant: slug, email, password: PASSWORD } });
    expect(res.status).toBe(200);
    return res.body as { accessToken: string; refreshToken: string };
  };
  const createUser = async (email: string, roles: string[]) => {
    const res = await operator('POST', `${t()}/users`, { body: { email, name: email, password: PASSWORD, roles } });
    expect(res.status).toBe(201);
    return res.body.id as string;
  };
  const createKey = async (client: ReturnType<typeof httpClient>, permissions: string[], expiresAt?: string) => {
    const res = await client('POST', `${t()}/api-keys`, { body: { name: `key-${permissions.join('-')}`, permissions, ...(expiresAt ? { expiresAt } : {}) } });
    expect(res.status).toBe(201);
    return res.body as { id: string; secret: string; expiresAt: string };
  };
  /**
   * Probes `path` until the gateway answers `status`. `changedAt` is when the change was
   * acknowledged (it happened no later). A probe counts by the moment it was sent, as in
   * identity.spec.ts: answers how long after the change the last probe that did not get `status`
   * had been sent (-1: none); one sent `ms` or more after the change that does not get it breaks
   * the bound and ends the wait.
   */
  const answersWithin = async (client: ReturnType<typeof httpClient>, path: string, status: number, changedAt: number, ms: number) => {
    let lastOther = -1;
    for (;;) {
      const sentAt = Date.now() - changedAt;
      const res = await client('GET', path);
      if (res.status === status) return { lastOther, res };
      lastOther = sentAt;
      if (sentAt >= ms) throw new Error(`${path} still answered ${res.status}, not ${status}, to a request sent ${sentAt} ms after the change`);
      await sleep(25);
    }
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const res = await operator('POST', '/api/v1/tenants', { body: { slug, name: slug, plan: 'professional' } });
    expect(res.status).toBe(201);
    tenantId = res.body.tenant.id;
    await eventually(() => operator('GET', `${t()}?consistentWith=${res.body.position}`), (r) => r.status === 200, { timeoutMs: 30_000, intervalMs: 100, what: 'the tenant in the read model' });
    await createUser('admin@creds.test', ['tenant_admin']);
    admin = as((await login('admin@creds.test')).accessToken);
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it("an API key of a demoted creator loses the permission within 1 s, and keeps what the creator still holds", async () => {
    const makerId = await createUser('maker@creds.test', ['tenant_admin']);
    const maker = as((await login('maker@creds.test')).accessToken);
    const key = as((await createKey(maker, ['sessions:read', 'tenants:read'])).secret);
    expect((await key('GET', `${t()}/sessions`)).status).toBe(200);
    expect((await key('GET', t())).status).toBe(200);

    const demoted = await admin('PUT', `${t()}/users/${makerId}/roles`, { body: { roles: ['viewer'] } });
    const changedAt = Date.now();
    expect(demoted.status).toBe(200);
    const { lastOther, res } = await answersWithin(key, `${t()}/sessions`, 403, changedAt, 1_000);
    expect(lastOther).toBeLessThan(1_000);
    expect(res.body.code).toBe('forbidden');
    // A viewer still reads the tenant: so does the key.
    expect((await key('GET', t())).status).toBe(200);
  });

  it("an API key cannot reset its creator's password through the admin route (a stolen key would sign in afresh); another user's it can", async () => {
    const makerId = await createUser('keymaker@creds.test', ['tenant_admin']);
    const token = (await login('keymaker@creds.test')).accessToken;
    const maker = as(token);
    // Everything the administrator holds: resetting another user's password needs all that user holds.
    const perms = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')).perms as string[];
    const made = await maker('POST', `${t()}/api-keys`, { body: { name: 'everything', permissions: perms } });
    expect(made.status).toBe(201);
    const key = as(made.body.secret as string);
    const own = await key('POST', `${t()}/users/${makerId}/password`, { body: { password: 'a takeover passphrase here' } });
    expect(own.status).toBe(403);
    expect(own.body.detail).toMatch(/auth\/password/);
    await login('keymaker@creds.test'); // the password is unchanged
    const otherId = await createUser('helped@creds.test', ['viewer']);
    expect((await key('POST', `${t()}/users/${otherId}/password`, { body: { password: 'a fresh passphrase for you' } })).status).toBe(204);
  });

  it('an API key of a disabled creator fails every request within 1 s', async () => {
    const makerId = await createUser('leaver@creds.test', ['tenant_admin']);
    const maker = as((await login('leaver@creds.test')).accessToken);
    const key = as((await createKey(maker, ['users:read', 'tenants:read'])).secret);
    expect((await key('GET', `${t()}/users`)).status).toBe(200);

    const disabled = await admin('PATCH', `${t()}/users/${makerId}/status`, { body: { status: 'disabled' } });
    const changedAt = Date.now();
    expect(disabled.status).toBe(200);
    const { lastOther, res } = await answersWithin(key, `${t()}/users`, 401, changedAt, 1_000);
    expect(lastOther).toBeLessThan(1_000);
    expect(res.body.code).toBe('invalid_token');
    for (const path of [t(), `${t()}/users`]) expect((await key('GET', path)).status).toBe(401);
  });

  it("a demoted user's live access token loses the permission within 1 s; a refresh carries the new roles", async () => {
    const userId = await createUser('demoted@creds.test', ['tenant_admin']);
    const tokens = await login('demoted@creds.test');
    const user = as(tokens.accessToken);
    expect((await user('GET', `${t()}/sessions`)).status).toBe(200);

    const demoted = await admin('PUT', `${t()}/users/${userId}/roles`, { body: { roles: ['viewer'] } });
    const changedAt = Date.now();
    expect(demoted.status).toBe(200);
    const { lastOther, res } = await answersWithin(user, `${t()}/sessions`, 401, changedAt, 1_000);
    expect(lastOther).toBeLessThan(1_000);
    expect(res.body).toMatchObject({ code: 'invalid_token', detail: expect.stringMatching(/roles changed; refresh/) });

    const refreshed = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: tokens.refreshToken } });
    expect(refreshed.status).toBe(200);
    const after = as(refreshed.body.accessToken);
    expect((await after('GET', `${t()}/sessions`)).status).toBe(403);
    expect((await after('GET', `${t()}/users`)).status).toBe(200);
  });

  it("a custom role's change reaches its holders' live tokens within 1 s", async () => {
    const created = await admin('POST', `${t()}/roles`, { body: { name: 'session-watchers', permissions: ['sessions:read', 'tenants:read'] } });
    expect(created.status).toBe(201);
    await createUser('watcher@creds.test', ['session-watchers']);
    const watcher = as((await login('watcher@creds.test')).accessToken);
    expect((await watcher('GET', `${t()}/sessions`)).status).toBe(200);

    const changed = await admin('PUT', `${t()}/roles/session-watchers`, { body: { permissions: ['tenants:read'] } });
    const changedAt = Date.now();
    expect(changed.status).toBe(200);
    const { lastOther } = await answersWithin(watcher, `${t()}/sessions`, 401, changedAt, 1_000);
    expect(lastOther).toBeLessThan(1_000);
  });

  it("refuses a key's expiresAt beyond the tenant's maximum with 400 naming expiresAt, and gives a key without one that maximum", async () => {
    const listed = async () => ((await admin('GET', `${t()}/api-keys`)).body.items as unknown[]).length;
    const before = await listed();
    const far = await admin('POST', `${t()}/api-keys`, { body: { name: 'forever', permissions: ['tenants:read'], expiresAt: '9999-12-31T00:00:00Z' } });
    expect(far.status).toBe(400);
    expect(far.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(far.body.errors).toEqual([expect.objectContaining({ field: 'expiresAt', message: expect.stringMatching(/365 days/) })]);
    expect(await listed()).toBe(before);

    const defaulted = await createKey(admin, ['tenants:read']);
    expect(Math.abs(new Date(defaulted.expiresAt).getTime() - (Date.now() + 365 * DAY_MS))).toBeLessThan(60_000);

    const set = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { apiKeyMaxLifetimeDays: 30 } });
    expect(set.status).toBe(200);
    // The auth service keeps a tenant for up to 2 s: until then it may still allow 365 days.
    const refused = await eventually(
      () => admin('POST', `${t()}/api-keys`, { body: { name: 'too-long', permissions: ['tenants:read'], expiresAt: new Date(Date.now() + 31 * DAY_MS).toISOString() } }),
      (r) => r.status !== 201,
      { timeoutMs: 10_000, intervalMs: 200, what: 'the 30-day maximum to apply' },
    );
    expect(refused.status).toBe(400);
    expect(refused.body.errors[0]).toMatchObject({ field: 'expiresAt', message: expect.stringMatching(/30 days/) });
    const capped = await createKey(admin, ['tenants:read']);
    expect(Math.abs(new Date(capped.expiresAt).getTime() - (Date.now() + 30 * DAY_MS))).toBeLessThan(60_000);
  });

  it('rotation ends the old secret (within 1 s, or after the grace period) and records when a key was last used', async () => {
    const created = await createKey(admin, ['tenants:read']);
    const old = as(created.secret);
    expect((await old('GET', t())).status).toBe(200);
    // Its use is recorded (at most once a minute), through the log.
    const used = await eventually(
      () => admin('GET', `${t()}/api-keys`),
      (r) => r.body.items.some((k: { id: string; lastUsedAt: string | null }) => k.id === created.id && k.lastUsedAt),
      { timeoutMs: 10_000, intervalMs: 100, what: 'lastUsedAt to be recorded' },
    );
    expect(used.status).toBe(200);

    const rotated = await admin('POST', `${t()}/api-keys/${created.id}/rotate`, { body: {} });
    const rotatedAt = Date.now();
    expect(rotated.status).toBe(200);
    expect(rotated.body).toMatchObject({ id: created.id, rotatedAt: expect.any(String), secret: expect.stringMatching(/^keel_/) });
    expect(rotated.body.secret).not.toBe(created.secret);
    const { lastOther } = await answersWithin(old, t(), 401, rotatedAt, 1_000);
    expect(lastOther).toBeLessThan(1_000);
    const next = as(rotated.body.secret);
    expect((await next('GET', t())).status).toBe(200);

    // With a grace period the old secret keeps working until it ends.
    const graced = await admin('POST', `${t()}/api-keys/${created.id}/rotate`, { body: { gracePeriodSeconds: 600 } });
    expect(graced.status).toBe(200);
    expect(new Date(graced.body.previousSecretValidUntil).getTime()).toBeGreaterThan(Date.now() + 500_000);
    expect((await next('GET', t())).status).toBe(200);
    expect((await as(graced.body.secret)('GET', t())).status).toBe(200);

    // Bad input changes nothing; a rotator must hold the key's permissions.
    const bad = await admin('POST', `${t()}/api-keys/${created.id}/rotate`, { body: { gracePeriodSeconds: -1 } });
    expect(bad.status).toBe(400);
    expect(bad.body.errors[0].field).toMatch(/gracePeriodSeconds/);
    expect((await as(graced.body.secret)('GET', t())).status).toBe(200);
    const keyOfAdmin = await createKey(admin, ['users:write']);
    await createUser('dev@creds.test', ['developer']);
    const dev = as((await login('dev@creds.test')).accessToken);
    const stolen = await dev('POST', `${t()}/api-keys/${keyOfAdmin.id}/rotate`, { body: {} });
    expect(stolen.status).toBe(403);
    // The key still authenticates (403 for a route it may not use, not 401).
    expect((await as(keyOfAdmin.secret)('GET', `${t()}/users`)).status).toBe(403);
  });
});
