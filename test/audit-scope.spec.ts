import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'violet kettle drums sideways';

/**
 * The ledger is one chain over every tenant: its checkpoints and its verification are for platform
 * principals only; a tenant's administrator or security auditor (who hold audit:read and
 * audit:verify for their own trail) is refused with 403 problem+json. The checkpoint keys stay
 * public, and a tenant's own trail (events) stays readable by it.
 */
describe('audit routes: platform-only checkpoints and verification', () => {
  const env = isolatedEnv('auditscope');
  // A checkpoint after every entry, so there are some to leak.
  const stack = new Stack(env, { KEEL_CHECKPOINT_EVERY: '1', KEEL_CHECKPOINT_INTERVAL_MS: '200' });
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let tenantId: string;

  const signIn = async (body: Record<string, string>) => {
    const res = await eventually(() => anonymous('POST', '/api/v1/auth/login', { body }), (r) => r.status === 200, { timeoutMs: 20_000, intervalMs: 100, what: `sign-in of ${body.email}` });
    return httpClient(stack.gatewayUrl, res.body.accessToken);
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'scoped-co', name: 'Scoped', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    for (const [email, role] of [['admin@scoped.test', 'tenant_admin'], ['auditor@scoped.test', 'security_auditor']]) {
      const user = await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: role, password: PASSWORD, roles: [role] } });
      expect(user.status).toBe(201);
    }
  }, 120_000);

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('refuses checkpoints and verification to a tenant admin and a tenant security auditor with 403 problem+json', async () => {
    const checkpoints = await eventually(() => operator('GET', '/api/v1/audit/checkpoints'), (r) => r.status === 200 && r.body.items.length > 0, { timeoutMs: 20_000, intervalMs: 100, what: 'a first checkpoint' });
    expect(checkpoints.body.items[0]).toMatchObject({ seq: expect.any(Number), hash: expect.any(String), signature: expect.any(String) });

    const admin = await signIn({ tenant: 'scoped-co', email: 'admin@scoped.test', password: PASSWORD });
    const auditor = await signIn({ tenant: 'scoped-co', email: 'auditor@scoped.test', password: PASSWORD });
    for (const [who, http] of [['tenant admin', admin], ['security auditor', auditor]] as const) {
      for (const path of ['/api/v1/audit/checkpoints', '/api/v1/audit/checkpoints?limit=1', '/api/v1/audit/verify', '/api/v1/audit/verify?fromSeq=1&toSeq=1']) {
        const res = await http('GET', path);
        expect({ who, path, status: res.status }).toEqual({ who, path, status: 403 });
        expect(res.headers.get('content-type')).toContain('application/problem+json');
        // A tenant admin does not hold audit:verify at all; the auditor does, and is refused as a tenant's principal.
        const why = who === 'tenant admin' && path.includes('verify') ? 'audit:verify' : 'platform principals only';
        expect(res.body).toMatchObject({ status: 403, code: 'forbidden', detail: expect.stringContaining(why) });
        expect(JSON.stringify(res.body)).not.toContain(checkpoints.body.items[0].hash);
      }
    }

    // A tenant's own trail is still its to read, and the checkpoint keys are public.
    const trail = await admin('GET', '/api/v1/audit/events?limit=5');
    expect(trail.status).toBe(200);
    expect(trail.body.items.every((e: { event: { tenantId: string } }) => e.event.tenantId === tenantId)).toBe(true);
    const keys = await anonymous('GET', '/api/v1/audit/keys');
    expect(keys.status).toBe(200);
    expect(keys.body.keys.length).toBeGreaterThan(0);
  });

  it('serves them to platform principals: the operator token and a signed-in platform administrator', async () => {
    const { email, password } = stack.admin;
    const platformAdmin = await signIn({ email, password });
    for (const http of [operator, platformAdmin]) {
      const checkpoints = await http('GET', '/api/v1/audit/checkpoints?limit=2');
      expect(checkpoints.status).toBe(200);
      expect(checkpoints.body.items.length).toBeGreaterThan(0);
      const verify = await http('GET', '/api/v1/audit/verify');
      expect(verify.status).toBe(200);
      expect(verify.body).toMatchObject({ ok: true });
    }
  });
});
