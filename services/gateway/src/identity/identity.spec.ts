import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { ACCESS_TOKEN_SECONDS, authEventTypes as A, KeelError, newEventId, TOKEN_AUDIENCE, TOKEN_ISSUER } from '@keel/contracts';
import { parseConfig } from '@keel/config';
import { encodeJson, Messaging, RpcClient } from '@keel/messaging';
import { IdentityVerifier } from './identity';

const TENANT = '01a20186-4df0-76d5-bf99-e87be230bc1a';

/** A valid envelope of an auth event, as the event store publishes it. */
function envelope(type: string, aggregateType: string, aggregateId: string, aggregateVersion = 2) {
  return {
    id: newEventId(), type, schemaVersion: 1, tenantId: TENANT, aggregateType, aggregateId, aggregateVersion,
    occurredAt: new Date().toISOString(), actor: { kind: 'system', id: 'test' }, correlationId: 'c-1', data: {},
  };
}

/** The verifier over a stubbed NATS connection (events delivered by hand), RPC client and Redis. */
async function verifier() {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'EdDSA' };
  let deliver: (data: unknown) => void = () => undefined;
  const m = {
    prefix: 'p.',
    nc: {
      subscribe: (_subject: string, opts: { callback: (err: unknown, msg: { data: Uint8Array }) => void }) => {
        deliver = (data) => opts.callback(null, { data: encodeJson(data) });
        return { unsubscribe: () => undefined };
      },
      status: () => ({ [Symbol.asyncIterator]: () => ({ next: () => new Promise(() => undefined) }) }),
    },
  } as unknown as Messaging;
  const apiKeyAnswers = new Map<string, unknown>();
  /** What the auth service says a user holds now. */
  const currentAccess = new Map<string, { active: boolean; roles: string[]; permissions: string[] }>();
  const asked: string[] = [];
  const rpc = {
    request: async (subject: string, body: { secret?: string; userId?: string }) => {
      asked.push(subject);
      if (subject === 'qry.auth.jwks') return { keys: [jwk] };
      if (subject === 'qry.auth.current_access') return currentAccess.get(body.userId!) ?? { active: false, roles: [], permissions: [] };
      const answer = apiKeyAnswers.get(body.secret!);
      if (answer instanceof Error) throw answer;
      return answer;
    },
  } as unknown as RpcClient;
  /** Redis: the revoked session keys it holds, the access changes (key → ms), or down. */
  const redisState = { down: false, revoked: new Set<string>(), changes: new Map<string, number>() };
  const redis = {
    mget: async (...keys: string[]) => {
      if (redisState.down) throw new Error("Stream isn't writeable and enableOfflineQueue options is false");
      return keys.map((k) => (redisState.revoked.has(k) ? 'revoked' : redisState.changes.has(k) ? String(redisState.changes.get(k)) : null));
    },
  };
  const config = parseConfig({ KEEL_REDIS_PREFIX: 't:' });
  const v = new IdentityVerifier(m, rpc, redis as never, config);
  v.onModuleInit();
  const token = (sid: string, expiresInSeconds = ACCESS_TOKEN_SECONDS, claims: { sub?: string; roles?: string[]; perms?: string[]; iat?: number } = {}) =>
    new SignJWT({ tid: TENANT, sid, roles: claims.roles ?? ['member'], ...(claims.perms ? { perms: claims.perms } : {}) })
      .setProtectedHeader({ alg: 'EdDSA', kid: 'k1' })
      .setSubject(claims.sub ?? `user-${sid}`)
      .setIssuer(TOKEN_ISSUER)
      .setAudience(TOKEN_AUDIENCE)
      .setIssuedAt(claims.iat ?? Math.floor(Date.now() / 1000))
      .setExpirationTime(Math.floor(Date.now() / 1000) + expiresInSeconds)
      .sign(privateKey);
  const revokeSession = (sid: string) => deliver(envelope(A.sessionRevoked, 'session', sid));
  const revokeKey = (id: string) => deliver(envelope(A.apiKeyRevoked, 'api_key', id));
  /** An event that changes access, at `at` (ms) on the log. */
  const change = (type: string, aggregateType: string, aggregateId: string, data: object = {}, at = Date.now()) =>
    deliver({ ...envelope(type, aggregateType, aggregateId), occurredAt: new Date(at).toISOString(), data });
  return { v, token, revokeSession, revokeKey, deliver, change, redisState, apiKeyAnswers, currentAccess, asked };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'accepted',
    (e: unknown) => (e instanceof KeelError ? e.code : `not a KeelError: ${String(e)}`),
  );
}

afterEach(() => jest.restoreAllMocks());

describe('IdentityVerifier, bounded', () => {
  it('keeps at most maxCache verified tokens', async () => {
    const { v, token } = await verifier();
    v.limits.maxCache = 5;
    for (let n = 0; n < 20; n++) await v.verify(await token(`s${n}`));
    expect(v.size.tokens).toBe(5);
  });

  it('refuses a revoked session at once, and keeps at most maxRevocations revocations', async () => {
    const { v, token, revokeSession } = await verifier();
    v.limits.maxRevocations = 10;
    const t = await token('s-1');
    await v.verify(t);
    revokeSession('s-1');
    expect(await codeOf(v.verify(t))).toBe('invalid_token');
    for (let n = 0; n < 100; n++) revokeSession(`other-${n}`);
    expect(v.size.revokedSessions).toBe(10);
  });

  it('still refuses a session whose revocation was evicted: from Redis, and with Redis down 503, never accepted', async () => {
    const { v, token, revokeSession, redisState } = await verifier();
    v.limits.maxRevocations = 3;
    const t = await token('victim');
    await v.verify(t);
    revokeSession('victim');
    redisState.revoked.add('t:revoked:session:victim');
    for (let n = 0; n < 10; n++) revokeSession(`other-${n}`);
    expect(v.size.revokedSessions).toBe(3);
    // Not in the set any more: Redis knows.
    expect(await codeOf(v.verify(t))).toBe('invalid_token');

    // A fresh gateway state of the same kind, with Redis away: refused for now, not let through.
    const g = await verifier();
    g.v.limits.maxRevocations = 3;
    const t2 = await g.token('victim');
    await g.v.verify(t2);
    g.revokeSession('victim');
    for (let n = 0; n < 10; n++) g.revokeSession(`other-${n}`);
    g.redisState.down = true;
    expect(await codeOf(g.v.verify(t2))).toBe('service_unavailable');
  });

  it('with Redis down, accepts a token that no forgotten revocation can concern (one that outlives them all)', async () => {
    const { v, token, revokeSession, redisState } = await verifier();
    v.limits.maxRevocations = 3;
    for (let n = 0; n < 10; n++) revokeSession(`other-${n}`);
    redisState.down = true;
    // Issued later than every forgotten revocation could matter for: no revoked session can hold it.
    const later = await token('new-session', ACCESS_TOKEN_SECONDS + 120);
    expect(await codeOf(v.verify(later))).toBe('accepted');
    // One that could belong to a forgotten session is not.
    expect(await codeOf(v.verify(await token('unknown')))).toBe('service_unavailable');
  });

  it('drops passed revocations first, so a full set of old ones forgets nothing that matters', async () => {
    const { v, token, revokeSession, redisState } = await verifier();
    v.limits.maxRevocations = 3;
    const now = Date.now();
    const clock = jest.spyOn(Date, 'now').mockReturnValue(now);
    for (let n = 0; n < 3; n++) revokeSession(`old-${n}`);
    // Past the lifetime of every token of those sessions.
    clock.mockReturnValue(now + (ACCESS_TOKEN_SECONDS + 61) * 1000);
    for (let n = 0; n < 3; n++) revokeSession(`new-${n}`);
    expect(v.size.revokedSessions).toBe(3);
    clock.mockRestore();
    redisState.down = true;
    // Nothing current was forgotten: Redis away is no reason to refuse (fail open, as before).
    expect(await codeOf(v.verify(await token('fine')))).toBe('accepted');
  });

  it('remembers a revoked API key while the auth service could still answer stale, bounded, and stops caching keys once it had to forget one', async () => {
    const { v, revokeKey, apiKeyAnswers, asked } = await verifier();
    v.limits.maxRevocations = 3;
    const info = (id: string) => ({ id, tenantId: TENANT, permissions: [], effectivePermissions: [], createdBy: 'u-1', validUntil: new Date(Date.now() + 3_600_000).toISOString() });
    // The auth service answers as if the key were still valid (a read model not caught up yet).
    apiKeyAnswers.set('keel_secret_a', info('key-a'));
    await v.verify('keel_secret_a');
    revokeKey('key-a');
    expect(await codeOf(v.verify('keel_secret_a'))).toBe('invalid_token');

    for (let n = 0; n < 10; n++) revokeKey(`other-${n}`);
    expect(v.size.revokedKeys).toBe(3);
    // The revocation of key-a was forgotten early: every use of a key now asks the auth service,
    // whose own refusal applies.
    apiKeyAnswers.set('keel_secret_a', new KeelError('invalid_token', 'This API key has been revoked.'));
    expect(await codeOf(v.verify('keel_secret_a'))).toBe('invalid_token');
    apiKeyAnswers.set('keel_secret_b', info('key-b'));
    const before = asked.length;
    await v.verify('keel_secret_b');
    await v.verify('keel_secret_b');
    expect(asked.length - before).toBe(2);
  });

  it('caches API keys again once no forgotten revocation can matter', async () => {
    const { v, revokeKey, apiKeyAnswers, asked } = await verifier();
    v.limits.maxRevocations = 2;
    v.limits.revokedKeyMemoryMs = 1;
    revokeKey('x');
    revokeKey('y');
    revokeKey('z');
    apiKeyAnswers.set('keel_secret_c', { id: 'key-c', tenantId: TENANT, permissions: [], effectivePermissions: [], createdBy: 'u-1', validUntil: new Date(Date.now() + 3_600_000).toISOString() });
    const now = Date.now();
    jest.spyOn(Date, 'now').mockReturnValue(now + 10);
    const before = asked.length;
    await v.verify('keel_secret_c');
    await v.verify('keel_secret_c');
    expect(asked.length - before).toBe(1);
  });
});

describe('IdentityVerifier, a revoked credential is never cached', () => {
  it('a token of a revoked session verified while Redis is away is refused, and refused again after its revocation was evicted', async () => {
    const { v, token, revokeSession, redisState } = await verifier();
    v.limits.maxRevocations = 2;
    const t = await token('victim');
    revokeSession('victim');
    redisState.down = true;
    expect(await codeOf(v.verify(t))).toBe('invalid_token');
    for (let n = 0; n < 5; n++) revokeSession(`other-${n}`);
    expect(await codeOf(v.verify(t))).toBe('service_unavailable');
  });
});

describe('IdentityVerifier, events', () => {
  it('hears each event of a decision published as one message (a JSON array of envelopes)', async () => {
    const { v, token, deliver } = await verifier();
    const first = await token('s-a');
    const second = await token('s-b');
    await v.verify(first);
    await v.verify(second);
    deliver([envelope(A.sessionRevoked, 'session', 's-a'), envelope(A.sessionRevoked, 'session', 's-b')]);
    expect(await codeOf(v.verify(first))).toBe('invalid_token');
    expect(await codeOf(v.verify(second))).toBe('invalid_token');
    expect(v.size.revokedSessions).toBe(2);
  });
});

describe('IdentityVerifier, access changes reach live credentials', () => {
  const USER = '0190f2a0-0000-7000-8000-0000000000aa';
  const second = () => Math.floor(Date.now() / 1000);

  it("refuses a user's token issued in a second before the change of their roles, and accepts one issued in a later second", async () => {
    const { v, token, change } = await verifier();
    const old = await token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: second() - 5 });
    expect(await codeOf(v.verify(old))).toBe('accepted');
    change(A.userRolesChanged, 'user', USER, { roles: ['viewer'] }, Date.now());
    await expect(v.verify(old)).rejects.toMatchObject({ code: 'invalid_token', message: 'Your roles changed; refresh your token.' });
    const fresh = await token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: second() + 1 });
    expect(await codeOf(v.verify(fresh))).toBe('accepted');
    // Someone else's token is not concerned.
    expect(await codeOf(v.verify(await token('s-2', ACCESS_TOKEN_SECONDS, { iat: second() - 5 })))).toBe('accepted');
  });

  it('asks the auth service about a token issued in the very second of the change: it passes only holding no more than the user does now', async () => {
    const { v, token, change, currentAccess, asked } = await verifier();
    // The change at the middle of a second, heard then.
    const sameSecond = second();
    const clock = jest.spyOn(Date, 'now').mockReturnValue(sameSecond * 1000 + 500);
    change(A.userRolesChanged, 'user', USER, { roles: ['viewer'] }, sameSecond * 1000 + 500);
    clock.mockRestore();
    currentAccess.set(USER, { active: true, roles: ['viewer'], permissions: ['tenants:read'] });
    const demoted = await token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: sameSecond, roles: ['viewer'], perms: ['tenants:read'] });
    expect(await codeOf(v.verify(demoted))).toBe('accepted');
    expect(asked.filter((s) => s === 'qry.auth.current_access')).toHaveLength(1);
    const stale = await token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: sameSecond, roles: ['tenant_admin'], perms: ['tenants:read', 'users:write'] });
    expect(await codeOf(v.verify(stale))).toBe('invalid_token');
    currentAccess.set(USER, { active: false, roles: [], permissions: [] });
    const other = await token('s-3', ACCESS_TOKEN_SECONDS, { sub: USER, iat: sameSecond, roles: ['viewer'], perms: ['tenants:read'] });
    expect(await codeOf(v.verify(other))).toBe('invalid_token');
  });

  it("a custom role's change refuses the tokens carrying it, in its tenant only; a grant or a disabling refuses the user's", async () => {
    const { v, token, change } = await verifier();
    const iat = second() - 5;
    const holder = await token('s-1', ACCESS_TOKEN_SECONDS, { iat, roles: ['auditors'], perms: ['audit:read'] });
    const other = await token('s-2', ACCESS_TOKEN_SECONDS, { iat, roles: ['viewer'] });
    await v.verify(holder);
    await v.verify(other);
    change(A.roleUpdated, 'role', 'auditors', { description: '', permissions: ['tenants:read'] });
    expect(await codeOf(v.verify(holder))).toBe('invalid_token');
    expect(await codeOf(v.verify(other))).toBe('accepted');

    const granted = await token('s-4', ACCESS_TOKEN_SECONDS, { sub: USER, iat });
    await v.verify(granted);
    // A team-scope grant is not in tokens: nothing changes.
    change(A.roleGranted, 'role_assignment', 'a-1', { userId: USER, role: 'viewer', teamId: '0190f2a0-0000-7000-8000-0000000000bb' });
    expect(await codeOf(v.verify(granted))).toBe('accepted');
    change(A.roleRevoked, 'role_assignment', 'a-2', { userId: USER, role: 'viewer' });
    expect(await codeOf(v.verify(granted))).toBe('invalid_token');
  });

  it('a change this gateway did not hear is found in Redis; one it had to forget, with Redis away, is 503, never accepted', async () => {
    const { v, token, redisState } = await verifier();
    redisState.changes.set(`t:changed:user:${USER}`, Date.now());
    expect(await codeOf(v.verify(await token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: second() - 5 })))).toBe('invalid_token');
    redisState.changes.set(`t:changed:role:${TENANT}:auditors`, Date.now());
    expect(await codeOf(v.verify(await token('s-2', ACCESS_TOKEN_SECONDS, { iat: second() - 5, roles: ['auditors'] })))).toBe('invalid_token');

    const g = await verifier();
    g.v.limits.maxRevocations = 2;
    const t = await g.token('s-1', ACCESS_TOKEN_SECONDS, { sub: USER, iat: second() - 5 });
    g.change(A.userDisabled, 'user', USER);
    for (let n = 0; n < 5; n++) g.change(A.userRolesChanged, 'user', `0190f2a0-0000-7000-8000-00000000000${n}`, { roles: [] });
    expect(g.v.size.changes).toBe(2);
    g.redisState.down = true;
    expect(await codeOf(g.v.verify(t))).toBe('service_unavailable');
  });

  it("drops the cached API keys of a creator whose access changed, and of a rotated key, and verifies them afresh", async () => {
    const { v, change, apiKeyAnswers, asked } = await verifier();
    const info = (id: string, createdBy: string, effectivePermissions: string[]) => ({
      id, tenantId: TENANT, permissions: ['users:write'], effectivePermissions, createdBy, validUntil: new Date(Date.now() + 3_600_000).toISOString(),
    });
    apiKeyAnswers.set('keel_mine', info('key-1', USER, ['users:write']));
    apiKeyAnswers.set('keel_theirs', info('key-2', 'someone-else', ['users:write']));
    expect([...(await v.verify('keel_mine')).permissions]).toEqual(['users:write']);
    await v.verify('keel_theirs');
    const before = asked.length;
    await v.verify('keel_mine');
    expect(asked.length).toBe(before);
    // The creator is demoted: the auth service now answers the key without the permission.
    apiKeyAnswers.set('keel_mine', info('key-1', USER, []));
    change(A.userRolesChanged, 'user', USER, { roles: ['viewer'] });
    expect([...(await v.verify('keel_mine')).permissions]).toEqual([]);
    expect(asked.length).toBe(before + 1);
    // The other creator's key stays cached.
    await v.verify('keel_theirs');
    expect(asked.length).toBe(before + 1);
    // Disabled: the auth service refuses the key.
    apiKeyAnswers.set('keel_mine', new KeelError('invalid_token', "The API key's creator is disabled or no longer exists; the key no longer works."));
    change(A.userDisabled, 'user', USER);
    expect(await codeOf(v.verify('keel_mine'))).toBe('invalid_token');
    // Rotation: the old secret is verified afresh (and refused once it ended).
    apiKeyAnswers.set('keel_theirs', new KeelError('invalid_token', 'The API key is not valid.'));
    change(A.apiKeyRotated, 'api_key', 'key-2', { previousSecretValidUntil: new Date().toISOString() });
    expect(await codeOf(v.verify('keel_theirs'))).toBe('invalid_token');
  });
});
