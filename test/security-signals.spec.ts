import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
/** The denial window of this stack, in seconds (the default is a minute): the burst below fits in one, or straddles two. */
const DENIAL_WINDOW_SECONDS = 10;

interface Entry {
  event: { type: string; tenantId: string; actor: { kind: string; id: string }; data: Record<string, any> };
}

/**
 * Issue 7, "denials and attacks are visible", on the real stack: a principal's 403s become at most
 * two `security.access.denied` facts per window and gateway (the first at once, the rest counted when
 * the window closes), and a tenant's failed sign-ins past its threshold in a minute raise one
 * `security.alert.raised`. Both are read back from the ledger, where an auditor finds them.
 */
describe('security signals', () => {
  const env = { ...isolatedEnv('securitysignals'), KEEL_DENIAL_WINDOW_SECONDS: String(DENIAL_WINDOW_SECONDS) };
  const stack = new Stack(env);
  const operator = () => httpClient(stack.gatewayUrl, stack.token);
  const anonymous = () => httpClient(stack.gatewayUrl);
  let tenant: { id: string; slug: string };

  const ledger = async (tenantId: string, type: string): Promise<Entry[]> => {
    const res = await operator()('GET', `/api/v1/audit/events?tenantId=${tenantId}&type=${type}&limit=1000`);
    if (res.status !== 200) throw new Error(`audit/events answered ${res.status}: ${JSON.stringify(res.body)}`);
    return res.body.items as Entry[];
  };

  beforeAll(async () => {
    await stack.startAll();
    const created = await operator()('POST', '/api/v1/tenants', { body: { slug: 'signals', name: 'Signals', plan: 'starter' } });
    expect(created.status).toBe(201);
    tenant = { id: created.body.tenant.id, slug: 'signals' };
    await eventually(
      () => operator()('GET', `/api/v1/tenants/${tenant.id}?consistentWith=${created.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, what: 'the tenant in the read model' },
    );
    // Failures do not lock the account before the alert's threshold is passed.
    const settings = await operator()('PATCH', `/api/v1/tenants/${tenant.id}/settings`, { body: { failedSignInAlertThreshold: 10, maxFailedLogins: 50 } });
    expect(settings.status).toBe(200);
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('records a principal’s refusals as at most two facts per window: the first at once, the rest counted when it closes', async () => {
    const viewer = await operator()('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: 'viewer@signals.test', name: 'Viewer', password: PASSWORD, roles: ['viewer'] } });
    expect(viewer.status).toBe(201);
    const signIn = await anonymous()('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: 'viewer@signals.test', password: PASSWORD } });
    expect(signIn.status).toBe(200);
    const asViewer = httpClient(stack.gatewayUrl, signIn.body.accessToken as string);

    // A viewer may not create users nor change settings: 30 refusals on two routes.
    const refused = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        i % 3 === 0
          ? asViewer('PATCH', `/api/v1/tenants/${tenant.id}/settings`, { body: { mfaRequired: true } })
          : asViewer('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: `x${i}@signals.test`, name: 'X', password: PASSWORD } }),
      ),
    );
    expect(refused.map((r) => r.status)).toEqual(Array(30).fill(403));

    const mine = async () => (await ledger(tenant.id, 'security.access.denied')).filter((e) => e.event.actor.id === viewer.body.id);
    const total = (facts: Entry[]) => facts.reduce((n, e) => n + (e.event.data.count as number), 0);
    const facts = await eventually(mine, (f) => total(f) >= 30, { timeoutMs: 30_000, what: 'the 30 refusals on the ledger' });
    expect(total(facts)).toBe(30);
    // Per window (the burst may straddle a boundary): the first refusal alone, then one count of the rest.
    const windows = new Map<string, number[]>();
    for (const e of facts) windows.set(e.event.data.windowStart, [...(windows.get(e.event.data.windowStart) ?? []), e.event.data.count as number]);
    for (const counts of windows.values()) {
      expect(counts.length).toBeLessThanOrEqual(2);
      expect(Math.min(...counts)).toBe(1);
    }
    expect(facts.length).toBeLessThanOrEqual(2 * windows.size);
    expect(windows.size).toBeLessThanOrEqual(2);
    for (const e of facts) expect(e.event.data).toMatchObject({ principal: { kind: 'user', id: viewer.body.id }, windowSeconds: DENIAL_WINDOW_SECONDS });
    const byRoute: Record<string, number> = {};
    for (const r of facts.flatMap((e) => e.event.data.routes as { method: string; route: string; count: number }[])) byRoute[`${r.method} ${r.route}`] = (byRoute[`${r.method} ${r.route}`] ?? 0) + r.count;
    expect(byRoute).toEqual({ 'POST /api/v1/tenants/:tenantId/users': 20, 'PATCH /api/v1/tenants/:id/settings': 10 });
    // No personal data in them: ids only.
    expect(JSON.stringify(facts)).not.toContain('viewer@signals.test');
    expect(JSON.stringify(facts)).not.toContain('127.0.0.1');
  });

  it('raises one security.alert.raised when a tenant’s failed sign-ins in a minute pass its threshold (10), emails it does not have included', async () => {
    const users = ['a', 'b'];
    for (const u of users) {
      const res = await operator()('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: `${u}@signals.test`, name: u, password: PASSWORD } });
      expect(res.status).toBe(201);
    }
    // Sixteen failures inside one minute: start early in a minute. Six are wrong passwords of
    // existing accounts (events on their logs), ten are emails the tenant does not have (credential
    // stuffing: no log to be on), which alone do not pass the threshold.
    await eventually(async () => Date.now() % 60_000, (ms) => ms < 40_000, { timeoutMs: 25_000, intervalMs: 200, what: 'the first 40 s of a minute' });
    for (let i = 0; i < 16; i++) {
      const email = i < 6 ? `${users[i % 2]}@signals.test` : `nobody-${i}@signals.test`;
      const res = await anonymous()('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email, password: 'not the password at all' } });
      expect(res.status).toBe(401);
    }
    await eventually(() => ledger(tenant.id, 'auth.user.login_failed'), (entries) => entries.length >= 6, { timeoutMs: 30_000, what: 'the 6 charged failures on the ledger' });
    const alerts = await eventually(() => ledger(tenant.id, 'security.alert.raised'), (a) => a.length >= 1, { timeoutMs: 30_000, what: 'the alert' });
    expect(alerts).toHaveLength(1);
    expect(alerts[0]!.event.data).toMatchObject({ rule: 'failed_sign_ins', threshold: 10, windowSeconds: 60 });
    // Raised when the count passed 10 (the two ways of counting may cross it together: the first published is kept).
    expect(alerts[0]!.event.data.observed).toBeGreaterThanOrEqual(11);
    expect(alerts[0]!.event.data.observed).toBeLessThanOrEqual(16);
    expect(alerts[0]!.event.actor).toEqual({ kind: 'service', id: 'auth' });
  });
});
