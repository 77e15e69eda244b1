import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { Client } from 'pg';
import { SignJWT, decodeProtectedHeader } from 'jose';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Identity and access end to end: real auth, tenant, audit and gateway processes. */
describe('identity and access', () => {
  const env = isolatedEnv('identity');
  const stack = new Stack(env);
  const second = new Stack(env);
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  const tenants: Record<string, { id: string; slug: string }> = {};

  const createTenant = async (slug: string, extra: Record<string, unknown> = {}) => {
    const res = await operator('POST', '/api/v1/tenants', { body: { slug, name: slug, plan: 'professional', ...extra } });
    expect(res.status).toBe(201);
    tenants[slug] = { id: res.body.tenant.id, slug };
    // The read model fills asynchronously: ask again after a consistency_timeout (503).
    const read = await eventually(
      () => operator('GET', `/api/v1/tenants/${res.body.tenant.id}?consistentWith=${res.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, intervalMs: 100, what: `tenant ${slug} in the read model` },
    );
    expect(read.status).toBe(200);
    return tenants[slug]!;
  };
  const createUser = async (tenantId: string, email: string, roles: string[], client = operator) => {
    const res = await client('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: email, password: PASSWORD, roles } });
    expect(res.status).toBe(201);
    return res.body as { id: string };
  };
  const login = (tenant: string | undefined, email: string, password = PASSWORD) =>
    anonymous('POST', '/api/v1/auth/login', { body: { ...(tenant ? { tenant } : {}), email, password } });
  const as = (token: string) => httpClient(stack.gatewayUrl, token);
  /**
   * Probes `path` until the gateway refuses the credential (401). `revokedAt` is when the
   * revocation request was answered (the revocation happened no later). A probe counts by the
   * moment it was sent: the gateway decided on it after that, so a slow round trip does not
   * count against the gateway. Answers how long after the revocation the last probe that was
   * not refused had been sent (-1: none was); a probe sent `ms` or more after the revocation
   * that is not refused breaks the bound and ends the wait.
   */
  const refusedWithin = async (client: ReturnType<typeof httpClient>, path: string, revokedAt: number, ms: number) => {
    let lastAccepted = -1;
    for (;;) {
      const sentAt = Date.now() - revokedAt;
      const res = await client('GET', path);
      if (res.status === 401) return lastAccepted;
      lastAccepted = sentAt;
      if (sentAt >= ms) throw new Error(`${path} still answered ${res.status} to a request sent ${sentAt} ms after the revocation`);
      await sleep(25);
    }
  };
  /** Until a login answers `status` (a tenant change reaches sign-ins once the auth service's 2 s tenant cache lets go). */
  const loginUntil = (tenant: string, email: string, status: number) =>
    eventually(() => login(tenant, email), (r) => r.status === status, { timeoutMs: 20_000, intervalMs: 200, what: `sign-in at ${tenant} to answer ${status}` });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    await createTenant('alpha');
    await createTenant('bravo');
    await createUser(tenants.alpha!.id, 'admin@alpha.test', ['tenant_admin']);
    await createUser(tenants.bravo!.id, 'admin@bravo.test', ['tenant_admin']);
  });

  afterAll(async () => {
    await second.stop();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('signs in the first platform administrator and tenant users, and publishes verification keys', async () => {
    const platform = await login(undefined, stack.admin.email, stack.admin.password);
    expect(platform.status).toBe(200);
    expect(platform.body).toMatchObject({ tokenType: 'Bearer', expiresIn: 900, accessToken: expect.any(String), refreshToken: expect.any(String) });
    expect((await as(platform.body.accessToken)('GET', '/api/v1/tenants')).status).toBe(200);

    const alpha = await login('alpha', 'admin@alpha.test');
    expect(alpha.status).toBe(200);
    const claims = JSON.parse(Buffer.from(alpha.body.accessToken.split('.')[1], 'base64url').toString());
    expect(claims).toMatchObject({ tid: tenants.alpha!.id, roles: ['tenant_admin'], iss: 'keel', aud: 'keel-api' });
    expect(claims.exp - claims.iat).toBe(900);
    expect((await as(alpha.body.accessToken)('GET', '/api/v1/tenants')).status).toBe(403);
    expect((await as(alpha.body.accessToken)('GET', `/api/v1/tenants/${tenants.alpha!.id}`)).status).toBe(200);

    const jwks = await anonymous('GET', '/.well-known/jwks.json');
    expect(jwks.body.keys[0]).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', kid: decodeProtectedHeader(alpha.body.accessToken).kid });
    const discovery = await anonymous('GET', '/.well-known/openid-configuration');
    expect(discovery.body).toMatchObject({ issuer: 'keel', jwks_uri: expect.stringMatching(/\/\.well-known\/jwks\.json$/) });

    for (const [tenant, email, password] of [['alpha', 'admin@alpha.test', 'wrong password!!'], ['alpha', 'nobody@alpha.test', PASSWORD], ['zulu', 'admin@alpha.test', PASSWORD]]) {
      const res = await login(tenant, email!, password);
      expect(res.status).toBe(401);
      expect(res.body.code).toBe('invalid_credentials');
      expect(res.body.detail).not.toMatch(/exist/i);
    }
  });

  it('refuses every tenant-B route to a tenant-A token (walking the route table)', async () => {
    const alpha = (await login('alpha', 'admin@alpha.test')).body.accessToken;
    const doc = await anonymous('GET', '/openapi.json');
    const b = tenants.bravo!.id;
    const ids: Record<string, string> = { tenantId: b, id: b, idOrSlug: 'bravo', userId: '01890a5d-ac96-774b-bcce-b302099a8057', keyId: '01890a5d-ac96-774b-bcce-b302099a8057', sessionId: '01890a5d-ac96-774b-bcce-b302099a8057' };
    let walked = 0;
    for (const [path, operations] of Object.entries(doc.body.paths as Record<string, Record<string, { 'x-permission': string }>>)) {
      if (!/\{(tenantId|id|idOrSlug)\}/.test(path)) continue;
      for (const [method, op] of Object.entries(operations)) {
        if (op['x-permission'] === 'public') continue;
        const url = path.replace(/\{(\w+)\}/g, (_, name: string) => ids[name] ?? name);
        const res = await as(alpha)(method.toUpperCase(), url, method === 'get' ? {} : { body: {} });
        expect({ method, url, refused: [403, 404].includes(res.status) }).toEqual({ method, url, refused: true });
        walked++;
      }
    }
    expect(walked).toBeGreaterThanOrEqual(15);
    const events = await as(alpha)('GET', `/api/v1/audit/events?tenantId=${b}`);
    expect([403, 404]).toContain(events.status);
  });

  it('50 parallel wrong passwords: at most N are checked, then the account is locked', async () => {
    await createUser(tenants.alpha!.id, 'target@alpha.test', ['viewer']);
    const results = await Promise.all(Array.from({ length: 50 }, () => login('alpha', 'target@alpha.test', 'definitely wrong')));
    const checked = results.filter((r) => r.status === 401).length;
    const locked = results.filter((r) => r.status === 423).length;
    expect(checked).toBeLessThanOrEqual(5);
    expect(checked + locked).toBe(50);
    expect(locked).toBeGreaterThanOrEqual(45);
    expect((await login('alpha', 'target@alpha.test')).status).toBe(423);
    // The audit consumer fills the ledger asynchronously: wait for the entry, then check there is exactly one.
    const trail = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${tenants.alpha!.id}&type=auth.user.locked`),
      (r) => r.status === 200 && r.body.items?.length >= 1,
      { what: 'the auth.user.locked audit entry' },
    );
    expect(trail.body.items).toHaveLength(1);
  });

  it('rotates refresh tokens; reusing one revokes the whole session, refused at the gateway within 1 s', async () => {
    const first = (await login('alpha', 'admin@alpha.test')).body;
    const second = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: first.refreshToken } });
    expect(second.status).toBe(200);
    expect(second.body.refreshToken).not.toBe(first.refreshToken);
    const client = as(second.body.accessToken);
    expect((await client('GET', `/api/v1/tenants/${tenants.alpha!.id}`)).status).toBe(200);
    const reuse = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: first.refreshToken } });
    const revokedAt = Date.now();
    expect(reuse.status).toBe(401);
    expect(await refusedWithin(client, `/api/v1/tenants/${tenants.alpha!.id}`, revokedAt, 1_000)).toBeLessThan(1_000);
    expect((await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: second.body.refreshToken } })).status).toBe(401);
  });

  it('takes over an email whose reservation is stale and never became a user, but not a pending one', async () => {
    const a = tenants.alpha!.id;
    const admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    try {
      // What a creation whose event never reached the log leaves behind (the service answered 503).
      await admin.query(
        `INSERT INTO auth.email_reservations (tenant_id, email, user_id, reserved_at)
         VALUES ($1, 'ghost@alpha.test', $2, now() - interval '5 minutes'), ($1, 'pending@alpha.test', $3, now())`,
        [a, randomUUID(), randomUUID()],
      );
    } finally {
      await admin.end();
    }
    // Signing in as the pending one is an ordinary failure, not an error.
    expect((await login('alpha', 'pending@alpha.test')).status).toBe(401);
    expect((await operator('POST', `/api/v1/tenants/${a}/users`, { body: { email: 'pending@alpha.test', name: 'P', password: PASSWORD } })).status).toBe(409);
    const ghost = await createUser(a, 'ghost@alpha.test', ['viewer']);
    expect((await login('alpha', 'ghost@alpha.test')).status).toBe(200);
    expect((await operator('GET', `/api/v1/tenants/${a}/users/${ghost.id}`)).body.email).toBe('ghost@alpha.test');
  });

  it('ends the session when two refreshes race with one token: exactly one is answered, then neither token works', async () => {
    const first = (await login('alpha', 'admin@alpha.test')).body;
    const racing = await Promise.all(
      Array.from({ length: 6 }, () => anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: first.refreshToken } })),
    );
    const won = racing.filter((r) => r.status === 200);
    expect(won).toHaveLength(1);
    expect(racing.filter((r) => r.status !== 200).map((r) => r.status)).toEqual(Array(racing.length - won.length).fill(401));
    // Whoever won holds a token of a session that a losing holder has ended.
    for (const w of won) expect((await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: w.body.refreshToken } })).status).toBe(401);
  });

  it('signs out, and lists and revokes sessions', async () => {
    const session = (await login('alpha', 'admin@alpha.test')).body;
    const client = as(session.accessToken);
    const mine = await client('GET', '/api/v1/auth/sessions');
    expect(mine.status).toBe(200);
    expect(mine.body.items.length).toBeGreaterThanOrEqual(1);
    const logout = await client('POST', '/api/v1/auth/logout');
    const revokedAt = Date.now();
    expect(logout.status).toBe(204);
    expect(await refusedWithin(client, `/api/v1/tenants/${tenants.alpha!.id}`, revokedAt, 1_000)).toBeLessThan(1_000);
  });

  it('ends the oldest session beyond maxConcurrentSessions, and a disabled user\'s sessions in one decision; the ledger holds each, none as an incident', async () => {
    const t = await createTenant('sessions-cap');
    const capped = await operator('PATCH', `/api/v1/tenants/${t.id}/settings`, { body: { maxConcurrentSessions: 2 } });
    expect(capped.status).toBe(200);
    // The user is made after the change: the auth service reads the tenant (and its settings) then.
    const user = await createUser(t.id, 'cap@sessions.test', ['viewer']);
    const incidentsBefore = (await operator('GET', '/api/v1/audit/verify')).body.incidents;
    const first = (await loginUntil(t.slug, 'cap@sessions.test', 200)).body.accessToken as string;
    const second = (await login(t.slug, 'cap@sessions.test')).body.accessToken as string;
    expect((await as(first)('GET', `/api/v1/tenants/${t.id}`)).status).toBe(200);

    const third = await login(t.slug, 'cap@sessions.test');
    expect(third.status).toBe(200);
    expect(await refusedWithin(as(first), `/api/v1/tenants/${t.id}`, Date.now(), 1_000)).toBeLessThan(1_000);
    for (const token of [second, third.body.accessToken]) expect((await as(token)('GET', `/api/v1/tenants/${t.id}`)).status).toBe(200);

    // One decision ends both remaining sessions (two aggregates).
    const disabled = await operator('PATCH', `/api/v1/tenants/${t.id}/users/${user.id}/status`, { body: { status: 'disabled' } });
    expect(disabled.status).toBe(200);
    for (const token of [second, third.body.accessToken]) expect(await refusedWithin(as(token), `/api/v1/tenants/${t.id}`, Date.now(), 1_000)).toBeLessThan(1_000);

    // In the ledger: each revocation, with its reason, under its own session; and no incident.
    type Entry = { event: { type: string; aggregateId: string; data: { reason?: string } }; events?: Entry['event'][] };
    const revocations = (items: Entry[]) => items.flatMap((i) => i.events ?? [i.event]).filter((e) => e.type === 'auth.session.revoked');
    const entries = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${t.id}&limit=1000`),
      (r) => r.status === 200 && revocations(r.body.items).length === 3,
      { what: 'the three revocations in the ledger' },
    );
    const found = revocations(entries.body.items);
    expect(found.map((e) => e.data.reason).sort()).toEqual(['max_concurrent_sessions', 'user_disabled', 'user_disabled']);
    expect(new Set(found.map((e) => e.aggregateId)).size).toBe(3);
    const verified = await operator('GET', '/api/v1/audit/verify');
    expect(verified.body).toMatchObject({ ok: true, incidents: incidentsBefore });
  });

  it('keeps verifying tokens of a rotated-out key; refuses forged and alg:none tokens', async () => {
    const before = (await login('alpha', 'admin@alpha.test')).body.accessToken;
    const rotated = await operator('POST', '/api/v1/admin/signing-keys/rotate');
    expect(rotated.status).toBe(200);
    const after = (await login('alpha', 'admin@alpha.test')).body.accessToken;
    expect(decodeProtectedHeader(after).kid).toBe(rotated.body.kid);
    expect(decodeProtectedHeader(before).kid).not.toBe(rotated.body.kid);
    expect((await as(before)('GET', `/api/v1/tenants/${tenants.alpha!.id}`)).status).toBe(200);
    expect((await as(after)('GET', `/api/v1/tenants/${tenants.alpha!.id}`)).status).toBe(200);
    expect((await anonymous('GET', '/.well-known/jwks.json')).body.keys.length).toBeGreaterThanOrEqual(2);

    const claims = JSON.parse(Buffer.from(after.split('.')[1], 'base64url').toString());
    const { privateKey } = generateKeyPairSync('ed25519');
    const forged = await new SignJWT({ ...claims, roles: ['platform_admin'] })
      .setProtectedHeader({ alg: 'EdDSA', kid: decodeProtectedHeader(after).kid! })
      .sign(privateKey);
    const none = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify({ ...claims, roles: ['platform_admin'] })).toString('base64url')}.`;
    const tampered = after.replace(/\.([^.]+)\./, `.${Buffer.from(JSON.stringify({ ...claims, roles: ['platform_admin'] })).toString('base64url')}.`);
    for (const token of [forged, none, tampered]) {
      const res = await as(token)('GET', '/api/v1/tenants');
      expect(res.status).toBe(401);
    }
  });

  it('an API key does no more than its permissions, and nothing once revoked', async () => {
    const admin = as((await login('alpha', 'admin@alpha.test')).body.accessToken);
    const a = tenants.alpha!.id;
    const expiresAt = new Date(Date.now() + 86_400_000).toISOString();
    const created = await admin('POST', `/api/v1/tenants/${a}/api-keys`, { body: { name: 'ci', permissions: ['tenants:read'], expiresAt } });
    expect(created.status).toBe(201);
    expect(created.body.secret).toMatch(/^keel_[0-9a-f]{32}_/);
    const listed = await admin('GET', `/api/v1/tenants/${a}/api-keys`);
    expect(JSON.stringify(listed.body)).not.toContain(created.body.secret);
    const key = as(created.body.secret);
    expect((await key('GET', `/api/v1/tenants/${a}`)).status).toBe(200);
    expect((await key('GET', `/api/v1/tenants/${a}/users`)).status).toBe(403);
    expect((await key('GET', `/api/v1/tenants/${tenants.bravo!.id}`)).status).toBe(404);
    const greedy = await admin('POST', `/api/v1/tenants/${a}/api-keys`, { body: { name: 'greedy', permissions: ['platform:operate'], expiresAt } });
    expect(greedy.status).toBe(403);
    const revoked = await admin('DELETE', `/api/v1/tenants/${a}/api-keys/${created.body.id}`);
    const revokedAt = Date.now();
    expect(revoked.status).toBe(200);
    expect(await refusedWithin(key, `/api/v1/tenants/${a}`, revokedAt, 1_000)).toBeLessThan(1_000);
  });

  it('does not let anyone grant what they do not hold, and enforces maxUsers', async () => {
    const viewer = await createUser(tenants.alpha!.id, 'lead@alpha.test', ['team_lead']);
    const lead = as((await login('alpha', 'lead@alpha.test')).body.accessToken);
    expect((await lead('PUT', `/api/v1/tenants/${tenants.alpha!.id}/users/${viewer.id}/roles`, { body: { roles: ['tenant_admin'] } })).status).toBe(403);
    const tiny = await createTenant('tiny-co', { plan: 'custom', quotas: { maxUsers: 2, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 600 } });
    await createUser(tiny.id, 'one@tiny.test', ['viewer']);
    await createUser(tiny.id, 'two@tiny.test', ['viewer']);
    const renamed = await lead('PATCH', '/api/v1/auth/profile', { body: { name: 'Team Lead' } });
    expect(renamed.status).toBe(200);
    expect(renamed.body).toMatchObject({ name: 'Team Lead', email: 'lead@alpha.test', version: 2, position: expect.any(Number) });
    const third = await operator('POST', `/api/v1/tenants/${tiny.id}/users`, { body: { email: 'three@tiny.test', name: 'x', password: PASSWORD } });
    expect(third.status).toBe(409);
    expect(third.body.code).toBe('quota_exceeded');
    const weak = await operator('POST', `/api/v1/tenants/${tenants.alpha!.id}/users`, { body: { email: 'weak@alpha.test', name: 'x', password: 'short' } });
    expect(weak.status).toBe(400);
  });

  it('a suspended tenant\'s users cannot sign in; an MFA-required tenant gets a challenge, not tokens', async () => {
    const t = await createTenant('paused-co');
    await createUser(t.id, 'user@paused.test', ['viewer']);
    expect((await login('paused-co', 'user@paused.test')).status).toBe(200);
    expect((await operator('POST', `/api/v1/tenants/${t.id}/suspend`, { body: { reason: 'unpaid' } })).status).toBe(200);
    expect((await loginUntil('paused-co', 'user@paused.test', 401)).status).toBe(401);

    const m = await createTenant('mfa-co');
    await createUser(m.id, 'user@mfa.test', ['viewer']);
    expect((await operator('PATCH', `/api/v1/tenants/${m.id}/settings`, { body: { mfaRequired: true } })).status).toBe(200);
    const res = await loginUntil('mfa-co', 'user@mfa.test', 401);
    expect(res.status).toBe(401);
    expect(res.body.code).toBe('mfa_required');
    expect(res.body.accessToken).toBeUndefined();
  });

  it('custom roles, a team hierarchy with team-scope grants, and the permission matrix (JSON and CSV)', async () => {
    const a = tenants.alpha!.id;
    const admin = as((await login('alpha', 'admin@alpha.test')).body.accessToken);
    const role = await admin('POST', `/api/v1/tenants/${a}/roles`, { body: { name: 'gpu-operator', description: 'runs jobs', permissions: ['gpu:allocate', 'tenants:read'] } });
    expect(role.status).toBe(201);
    expect((await admin('POST', `/api/v1/tenants/${a}/roles`, { body: { name: 'root', permissions: ['platform:operate'] } })).status).toBe(403);
    expect((await admin('POST', `/api/v1/tenants/${a}/roles`, { body: { name: 'viewer', permissions: ['tenants:read'] } })).status).toBe(400);

    const ml = await admin('POST', `/api/v1/tenants/${a}/teams`, { body: { name: 'ML' } });
    const vision = await admin('POST', `/api/v1/tenants/${a}/teams`, { body: { name: 'Vision', parentId: ml.body.id } });
    expect(vision.status).toBe(201);
    expect((await admin('PATCH', `/api/v1/tenants/${a}/teams/${ml.body.id}`, { body: { parentId: vision.body.id } })).status).toBe(409);

    const dev = await createUser(a, 'dev@alpha.test', ['gpu-operator']);
    const devToken = (await login('alpha', 'dev@alpha.test')).body.accessToken;
    const claims = JSON.parse(Buffer.from(devToken.split('.')[1], 'base64url').toString());
    expect(claims.perms).toEqual(['gpu:allocate', 'tenants:read']);
    expect((await as(devToken)('GET', `/api/v1/tenants/${a}`)).status).toBe(200);

    const beyond = await admin('POST', `/api/v1/tenants/${a}/role-assignments`, { body: { userId: dev.id, role: 'security_auditor', teamId: ml.body.id } });
    expect(beyond.status).toBe(403);
    const grant = await admin('POST', `/api/v1/tenants/${a}/role-assignments`, { body: { userId: dev.id, role: 'billing_manager', teamId: ml.body.id } });
    expect(grant.status).toBe(201);
    const matrix = await admin('GET', `/api/v1/tenants/${a}/permission-matrix`);
    expect(matrix.status).toBe(200);
    const devRows = matrix.body.users.filter((u: { email: string }) => u.email === 'dev@alpha.test');
    expect(devRows.find((r: { scope: string }) => r.scope === 'tenant').permissions).toEqual(['gpu:allocate', 'tenants:read']);
    // The grant on ML reaches its sub-team Vision too.
    for (const team of [ml.body.id, vision.body.id]) {
      expect(devRows.find((r: { scope: string }) => r.scope === team).permissions).toEqual(expect.arrayContaining(['budgets:write', 'gpu:allocate']));
    }
    const csv = await admin('GET', `/api/v1/tenants/${a}/permission-matrix?format=csv`);
    expect(csv.headers.get('content-type')).toContain('text/csv');
    const lines = String(csv.body).trim().split('\n');
    expect(lines[0]).toMatch(/^kind,name,scope,tenants:read,/);
    expect(lines.find((l) => l.startsWith('custom role,gpu-operator,'))).toBeDefined();
    expect(lines.filter((l) => l.startsWith('user,dev@alpha.test,'))).toHaveLength(3);
    expect((await admin('DELETE', `/api/v1/tenants/${a}/roles/gpu-operator`)).status).toBe(409);
  });

  it('row-level security: a database session without a tenant reads no rows; with one, only that tenant\'s', async () => {
    const url = (role: string) => env.DATABASE_URL!.replace('postgres@', `${role}:keel@`);
    const tables: Record<string, string[]> = {
      keel_tenant: ['tenant.tenants', 'tenant.slug_reservations'],
      keel_audit: ['audit.ledger'],
      keel_auth: ['auth.users', 'auth.credentials', 'auth.email_reservations', 'auth.sessions', 'auth.api_keys', 'auth.roles', 'auth.teams', 'auth.role_assignments'],
    };
    const admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    try {
      for (const [role, list] of Object.entries(tables)) {
        const db = new Client({ connectionString: url(role) });
        await db.connect();
        try {
          for (const table of list) {
            const all = Number((await admin.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n);
            const none = Number((await db.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n);
            expect({ table, none }).toEqual({ table, none: 0 });
            if (table === 'auth.users') {
              expect(all).toBeGreaterThan(0);
              await db.query('BEGIN');
              await db.query(`SELECT set_config('keel.tenant_id', $1, true)`, [tenants.alpha!.id]);
              const own = (await db.query(`SELECT DISTINCT tenant_id FROM ${table}`)).rows.map((r) => r.tenant_id);
              await db.query('COMMIT');
              expect(own).toEqual([tenants.alpha!.id]);
            }
          }
        } finally {
          await db.end();
        }
      }
    } finally {
      await admin.end();
    }
  });

  it('does not let users:write take over a more privileged account, and puts tenant-scope grants in tokens', async () => {
    const a = tenants.alpha!.id;
    const admin = as((await login('alpha', 'admin@alpha.test')).body.accessToken);
    expect((await admin('POST', `/api/v1/tenants/${a}/roles`, { body: { name: 'helpdesk', permissions: ['users:read', 'users:write', 'tenants:read'] } })).status).toBe(201);
    await createUser(a, 'helpdesk@alpha.test', ['helpdesk']);
    const helpdesk = as((await login('alpha', 'helpdesk@alpha.test')).body.accessToken);
    const users = await admin('GET', `/api/v1/tenants/${a}/users?limit=500`);
    const adminId = users.body.items.find((u: { email: string }) => u.email === 'admin@alpha.test').id;
    expect((await helpdesk('POST', `/api/v1/tenants/${a}/users/${adminId}/password`, { body: { password: 'taken over at last!' } })).status).toBe(403);
    expect((await helpdesk('PATCH', `/api/v1/tenants/${a}/users/${adminId}/status`, { body: { status: 'disabled' } })).status).toBe(403);
    expect((await login('alpha', 'admin@alpha.test')).status).toBe(200);

    const auditor = await createUser(a, 'auditor@alpha.test', ['viewer']);
    expect((await operator('POST', `/api/v1/tenants/${a}/role-assignments`, { body: { userId: auditor.id, role: 'security_auditor' } })).status).toBe(201);
    const session = (await login('alpha', 'auditor@alpha.test')).body;
    const claims = JSON.parse(Buffer.from(session.accessToken.split('.')[1], 'base64url').toString());
    expect(claims.perms).toEqual(expect.arrayContaining(['audit:verify', 'users:read']));
    const refreshed = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: session.refreshToken } });
    const after = JSON.parse(Buffer.from(refreshed.body.accessToken.split('.')[1], 'base64url').toString());
    expect(after.perms).toEqual(claims.perms);
  });

  it('ends a suspended tenant\'s sessions, and a gateway started after a revocation refuses the revoked token', async () => {
    const t = await createTenant('ending-co');
    await createUser(t.id, 'user@ending.test', ['viewer']);
    const session = (await login('ending-co', 'user@ending.test')).body;
    const revokedSession = (await login('ending-co', 'user@ending.test')).body;
    const probeSession = (await login('ending-co', 'user@ending.test')).body;
    expect((await as(revokedSession.accessToken)('POST', '/api/v1/auth/logout')).status).toBe(204);
    await second.start('gateway');
    const late = httpClient(second.gatewayUrl, revokedSession.accessToken);
    expect((await late('GET', `/api/v1/tenants/${t.id}`)).status).toBe(401);
    await second.stop();

    expect((await operator('POST', `/api/v1/tenants/${t.id}/suspend`, { body: { reason: 'fraud' } })).status).toBe(200);
    const refused = await eventually(
      () => as(session.accessToken)('GET', `/api/v1/tenants/${t.id}`),
      (r) => r.status === 403,
      { timeoutMs: 20_000, intervalMs: 100, what: 'the gateway to refuse the suspended tenant\'s token' },
    );
    expect(refused.status).toBe(403);
    // The auth service keeps a found tenant up to 2 s: refresh a throwaway session (following its
    // rotation) until the suspension reaches refreshes, so the session under test is tried once.
    let probe: string = probeSession.refreshToken;
    await eventually(
      async () => {
        const r = await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: probe } });
        if (r.status === 200) probe = r.body.refreshToken;
        return r;
      },
      (r) => r.status === 401,
      { timeoutMs: 20_000, intervalMs: 200, what: 'refreshes of the suspended tenant\'s sessions to be refused' },
    );
    expect((await anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: session.refreshToken } })).status).toBe(401);
  });

  it('rate-limits a tenant per its plan across two gateway processes', async () => {
    const t = await createTenant('limited-co', { plan: 'custom', quotas: { maxUsers: 5, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 20 } });
    await createUser(t.id, 'user@limited.test', ['viewer']);
    const token = (await login('limited-co', 'user@limited.test')).body.accessToken;
    await second.start('gateway');
    const clients = [httpClient(stack.gatewayUrl, token), httpClient(second.gatewayUrl, token)];
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) => clients[i % 2]!('GET', `/api/v1/tenants/${t.id}`)));
    const ok = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status === 429);
    expect(ok).toHaveLength(20);
    expect(limited).toHaveLength(10);
    expect(Number(limited[0]!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(limited[0]!.headers.get('ratelimit-limit')).toBe('20');
    expect(limited[0]!.body.code).toBe('rate_limited');
  });
});
