import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';
import { Authenticator } from './support/authenticator';

const PASSWORD = 'correct horse battery staple';

/** Multi-factor sign-in end to end: real auth, tenant, audit and gateway processes. */
describe('multi-factor authentication (TOTP)', () => {
  const env = isolatedEnv('mfa');
  const stack = new Stack(env);
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let acme: { id: string; slug: string };

  const as = (token: string) => httpClient(stack.gatewayUrl, token);
  const createTenant = async (slug: string) => {
    const res = await operator('POST', '/api/v1/tenants', { body: { slug, name: slug, plan: 'professional' } });
    expect(res.status).toBe(201);
    // The read model fills asynchronously: ask again after a consistency_timeout (503).
    const read = await eventually(
      () => operator('GET', `/api/v1/tenants/${res.body.tenant.id}?consistentWith=${res.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, intervalMs: 100, what: `tenant ${slug} in the read model` },
    );
    expect(read.status).toBe(200);
    return { id: res.body.tenant.id as string, slug };
  };
  const createUser = async (tenantId: string, email: string) => {
    const res = await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: email, password: PASSWORD, roles: ['viewer'] } });
    expect(res.status).toBe(201);
    return res.body.id as string;
  };
  const login = (tenant: string, email: string, second: { totp?: string; recoveryCode?: string } = {}) =>
    anonymous('POST', '/api/v1/auth/login', { body: { tenant, email, password: PASSWORD, ...second } });
  const session = async (tenant: string, email: string) => {
    const res = await login(tenant, email);
    expect(res.status).toBe(200);
    return as(res.body.accessToken);
  };
  /** Starts and confirms enrolment for a signed-in user. */
  const enrol = async (user: ReturnType<typeof httpClient>) => {
    const started = await user('POST', '/api/v1/auth/mfa/totp');
    expect(started.status).toBe(201);
    const app = new Authenticator(started.body.secret);
    const confirmed = await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: await app.next() } });
    expect(confirmed.status).toBe(200);
    return { app, started: started.body as { secret: string; otpauthUrl: string }, recoveryCodes: confirmed.body.recoveryCodes as string[] };
  };
  const refusedWithChallenge = (res: { status: number; body: Record<string, unknown> }) => {
    expect({ status: res.status, code: res.body.code, accessToken: res.body.accessToken }).toEqual({ status: 401, code: 'mfa_required', accessToken: undefined });
  };
  type TrailItem = { event: { type: string; aggregateId: string; actor: { kind: string; id: string }; data: Record<string, unknown> } };
  /**
   * Events of a type the ledger holds for a tenant, once `ready` holds for them (the audit
   * consumer fills the ledger asynchronously); the caller then asserts on exactly what is there.
   */
  const trail = async (tenantId: string, type: string, ready: (items: TrailItem[]) => boolean) => {
    const res = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${tenantId}&type=${type}`),
      (r) => r.status === 200 && Array.isArray(r.body.items) && ready(r.body.items),
      { what: `${type} audit entries of tenant ${tenantId}` },
    );
    return res.body.items as TrailItem[];
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    acme = await createTenant('acme');
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  let ada: { id: string; app: Authenticator; recoveryCodes: string[] };

  it('enrols: a base32 secret and otpauth URL, confirmed with a current code, answering 10 recovery codes once', async () => {
    const id = await createUser(acme.id, 'ada@acme.test');
    const user = await session('acme', 'ada@acme.test');

    const started = await user('POST', '/api/v1/auth/mfa/totp');
    expect(started.status).toBe(201);
    expect(started.body.secret).toMatch(/^[A-Z2-7]{32}$/);
    const url = new URL(started.body.otpauthUrl);
    expect(`${url.protocol}//${url.host}${decodeURIComponent(url.pathname)}`).toBe('otpauth://totp/Keel:ada@acme.test');
    expect(Object.fromEntries(url.searchParams)).toMatchObject({ secret: started.body.secret, issuer: 'Keel' });
    const app = new Authenticator(started.body.secret);

    // Pending, not yet required: the password alone still signs in.
    expect((await login('acme', 'ada@acme.test')).status).toBe(200);
    const wrong = await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: app.wrong } });
    expect(wrong.status).toBe(400);
    expect(wrong.body.code).toBe('validation_failed');
    expect((await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: '12ab56' } })).status).toBe(400);

    const confirmed = await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: await app.next() } });
    expect(confirmed.status).toBe(200);
    const codes = confirmed.body.recoveryCodes as string[];
    expect(codes).toHaveLength(10);
    expect(new Set(codes).size).toBe(10);
    for (const code of codes) expect(code).toMatch(/^[a-z2-7]{5}-[a-z2-7]{5}$/);

    expect((await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: app.used } })).status).toBe(409);
    expect((await user('POST', '/api/v1/auth/mfa/totp')).status).toBe(409);
    // Only a signed-in user has a second factor: not the operator token.
    expect((await operator('POST', '/api/v1/auth/mfa/totp')).status).toBe(403);

    const enrolled = await trail(acme.id, 'auth.user.mfa_enrolled', (items) => items.length >= 1);
    expect(enrolled).toHaveLength(1);
    expect(enrolled[0]!.event).toMatchObject({ aggregateId: id, actor: { kind: 'user', id }, data: { method: 'totp', recoveryCodes: 10 } });
    expect(JSON.stringify(enrolled)).not.toContain(started.body.secret);
    ada = { id, app, recoveryCodes: codes };
  });

  it('sign-in without the code gets a challenge, not tokens; a valid code signs in once, and never again', async () => {
    refusedWithChallenge(await login('acme', 'ada@acme.test'));
    // The code that confirmed the enrolment is spent.
    refusedWithChallenge(await login('acme', 'ada@acme.test', { totp: ada.app.used }));
    refusedWithChallenge(await login('acme', 'ada@acme.test', { totp: ada.app.wrong }));

    const code = await ada.app.next();
    const ok = await login('acme', 'ada@acme.test', { totp: code });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ tokenType: 'Bearer', accessToken: expect.any(String), refreshToken: expect.any(String) });
    expect((await as(ok.body.accessToken)('GET', `/api/v1/tenants/${acme.id}`)).status).toBe(200);

    const replay = await login('acme', 'ada@acme.test', { totp: code });
    refusedWithChallenge(replay);
    expect(replay.body.detail ?? replay.body.message).toMatch(/already used/);

    const both = await login('acme', 'ada@acme.test', { totp: code, recoveryCode: ada.recoveryCodes[0]! });
    expect(both.status).toBe(400);

    // Wrong and replayed codes are failed sign-ins, like a wrong password.
    const failures = await trail(acme.id, 'auth.user.login_failed', (items) => items.filter((f) => f.event.aggregateId === ada.id).length >= 3);
    expect(failures.filter((f) => f.event.aggregateId === ada.id)).toHaveLength(3);
  });

  it('a recovery code signs in once; a second use is refused', async () => {
    const [first, second] = ada.recoveryCodes;
    const ok = await login('acme', 'ada@acme.test', { recoveryCode: first! });
    expect(ok.status).toBe(200);
    expect(ok.body.accessToken).toEqual(expect.any(String));
    refusedWithChallenge(await login('acme', 'ada@acme.test', { recoveryCode: first! }));
    refusedWithChallenge(await login('acme', 'ada@acme.test', { recoveryCode: 'abcde-fghij' }));
    // Typed back in capitals without the dash, it is the same code.
    expect((await login('acme', 'ada@acme.test', { recoveryCode: second!.replace('-', '').toUpperCase() })).status).toBe(200);

    const used = await trail(acme.id, 'auth.user.recovery_code_used', (items) => items.length >= 2);
    expect(used.map((u) => u.event.data.remaining).sort()).toEqual([8, 9]);
    expect(used[0]!.event.actor).toMatchObject({ kind: 'user', id: ada.id });
  });

  it('removing the factor needs a current, unused code; then the password alone signs in again', async () => {
    const id = await createUser(acme.id, 'bob@acme.test');
    const user = await session('acme', 'bob@acme.test');
    const { app, recoveryCodes } = await enrol(user);
    refusedWithChallenge(await login('acme', 'bob@acme.test'));

    expect((await user('DELETE', '/api/v1/auth/mfa/totp', { body: { code: app.used } })).status).toBe(400);
    expect((await user('DELETE', '/api/v1/auth/mfa/totp', { body: { code: app.wrong } })).status).toBe(400);
    expect((await user('DELETE', '/api/v1/auth/mfa/totp', { body: {} })).status).toBe(400);
    expect((await user('DELETE', '/api/v1/auth/mfa/totp', { body: { code: await app.next() } })).status).toBe(204);
    expect((await user('DELETE', '/api/v1/auth/mfa/totp', { body: { code: app.wrong } })).status).toBe(404);

    expect((await login('acme', 'bob@acme.test')).status).toBe(200);
    const removed = await trail(acme.id, 'auth.user.mfa_removed', (items) => items.some((r) => r.event.aggregateId === id));
    expect(removed[0]!.event).toMatchObject({ aggregateId: id, actor: { kind: 'user', id } });

    // Enrolling again issues new recovery codes; the old ones are gone.
    const again = await enrol(user);
    refusedWithChallenge(await login('acme', 'bob@acme.test', { recoveryCode: recoveryCodes[0]! }));
    expect((await login('acme', 'bob@acme.test', { recoveryCode: again.recoveryCodes[0]! })).status).toBe(200);
  });

  it('locks code guessing at enrolment after a few wrong codes', async () => {
    await createUser(acme.id, 'eve@acme.test');
    const user = await session('acme', 'eve@acme.test');
    const started = await user('POST', '/api/v1/auth/mfa/totp');
    const app = new Authenticator(started.body.secret);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: app.wrong } })).status);
    expect(statuses).toEqual([400, 400, 400, 400, 400, 423]);
    expect((await user('POST', '/api/v1/auth/mfa/totp/verify', { body: { code: await app.next() } })).status).toBe(423);
  });

  it('an MFA-required tenant gives no tokens without the second factor, nor to a user who has none', async () => {
    const strict = await createTenant('strict-co');
    await createUser(strict.id, 'carol@strict.test');
    await createUser(strict.id, 'dave@strict.test');
    const { app } = await enrol(await session('strict-co', 'carol@strict.test'));

    expect((await operator('PATCH', `/api/v1/tenants/${strict.id}/settings`, { body: { mfaRequired: true } })).status).toBe(200);
    // The auth service keeps a found tenant up to 2 s: sign in until the setting reaches sign-ins
    // (the password alone signs in until then; a refusal for want of a factor is no failed sign-in).
    const none = await eventually(() => login('strict-co', 'dave@strict.test'), (r) => r.status === 401, {
      timeoutMs: 20_000,
      intervalMs: 200,
      what: 'the MFA requirement to reach sign-ins',
    });
    refusedWithChallenge(none);
    expect(none.body.detail ?? none.body.message).toMatch(/administrator/);
    refusedWithChallenge(await login('strict-co', 'dave@strict.test', { totp: '123456' }));

    refusedWithChallenge(await login('strict-co', 'carol@strict.test'));
    const ok = await login('strict-co', 'carol@strict.test', { totp: await app.next() });
    expect(ok.status).toBe(200);
    expect(ok.body.accessToken).toEqual(expect.any(String));
  });
});
