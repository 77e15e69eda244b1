import { Client } from 'pg';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
/** What only Ada's data holds: her email, her names, her address (forwarded by the trusted proxy) and her user agents. */
const ADA = { email: 'ada@acme.test', name: 'Ada Lovelace', renamed: 'Ada King', ip: '198.51.100.7', agent: 'ada-agent/1.0', keyAgent: 'ada-key/1.0' };
const DPO = { email: 'dpo@acme.test', ip: '198.51.100.99', agent: 'dpo-agent/1.0' };
const ADA_TRACES = [ADA.email, ADA.name, ADA.renamed, ADA.ip, ADA.agent, ADA.keyAgent, '198.51.100.8', 'é'.repeat(64)];

type Http = ReturnType<typeof httpClient>;
interface Envelope {
  type: string;
  aggregateId: string;
  actor: { kind: string; id: string; ip?: string; userAgent?: string };
  data: Record<string, unknown>;
}
interface Entry {
  seq: number;
  event: Envelope;
  events?: Envelope[];
}

/**
 * Crypto-shredding end to end (issue 7): real audit, auth, tenant and gateway processes behind a
 * trusted proxy (loopback), Postgres, NATS and Redis. Ada signs in, is renamed, changes roles, makes
 * and uses an API key and fails a sign-in; her data is ciphertext in the ledger and readable through
 * the API; her export holds every ledger entry she is actor or subject of; after her erasure nothing
 * of her reads back anywhere (a rebuilt read model included), the ledger still verifies, she cannot
 * sign in, her tokens and keys stop, and her email makes a new user.
 */
describe('personal data: sealed per person, exported, erased', () => {
  const env = isolatedEnv('personal');
  const stack = new Stack(env, { KEEL_TRUSTED_PROXIES: '127.0.0.0/8' });
  let operator: Http;
  let db: Client;
  let tenant: { id: string; slug: string };
  let adaId: string;
  let dpoId: string;
  let ada: Http;
  let adaToken: string;
  let adaKey: Http;
  let dpo: Http;

  const from = (who: { ip: string; agent: string }, token?: string) => {
    const client = httpClient(stack.gatewayUrl, token);
    return (method: string, path: string, options: { body?: unknown } = {}) =>
      client(method, path, { ...options, headers: { 'x-forwarded-for': who.ip, 'user-agent': who.agent } });
  };
  const signIn = async (who: { email: string; ip: string; agent: string }) => {
    const res = await from(who)('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: who.email, password: PASSWORD } });
    expect(res.status).toBe(200);
    return res.body.accessToken as string;
  };
  /** Every entry of the tenant's trail through the API (decrypted for whoever may read it), oldest first. */
  const trail = async (): Promise<Entry[]> => {
    const items: Entry[] = [];
    for (let cursor: string | null = null; ; ) {
      const res = await operator('GET', `/api/v1/audit/events?tenantId=${tenant.id}&order=asc&limit=1000${cursor ? `&cursor=${cursor}` : ''}`);
      expect(res.status).toBe(200);
      items.push(...res.body.items);
      cursor = res.body.nextCursor;
      if (!cursor) return items;
    }
  };
  const eventsOf = (entries: Entry[]) => entries.flatMap((e) => e.events ?? [e.event]);
  /** The tenant's ledger rows as stored: the published bytes the hash chain covers. */
  const storedLedger = async () => (await db.query(`SELECT seq, envelope::text AS text FROM audit.ledger WHERE tenant_id = $1 ORDER BY seq`, [tenant.id])).rows as { seq: string; text: string }[];

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'shred-co', name: 'Shred Co', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenant = { id: created.body.tenant.id, slug: 'shred-co' };
    await eventually(() => operator('GET', `/api/v1/tenants/${tenant.id}?consistentWith=${created.body.position}`), (r) => r.status === 200, { what: 'the tenant in its read model' });
    const mk = async (email: string, name: string, roles: string[]) => {
      const res = await operator('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email, name, password: PASSWORD, roles } });
      expect(res.status).toBe(201);
      return res.body.id as string;
    };
    adaId = await mk(ADA.email, ADA.name, ['viewer']);
    dpoId = await mk(DPO.email, 'Data Protection Officer', ['tenant_admin']);
    dpo = from(DPO, await signIn(DPO));
    adaToken = await signIn(ADA);
    ada = from(ADA, adaToken);
    expect((await ada('PATCH', '/api/v1/auth/profile', { body: { name: ADA.renamed } })).status).toBe(200);
    expect((await from(ADA)('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: ADA.email, password: 'not her password at all' } })).status).toBe(401);
    expect((await dpo('PUT', `/api/v1/tenants/${tenant.id}/users/${adaId}/roles`, { body: { roles: ['developer'] } })).status).toBe(200);
    // With her new role (a fresh sign-in), a key of hers, used from another client.
    ada = from(ADA, (adaToken = await signIn(ADA)));
    const key = await ada('POST', `/api/v1/tenants/${tenant.id}/api-keys`, { body: { name: 'ada laptop', permissions: ['tenants:read', 'api_keys:write'] } });
    expect(key.status).toBe(201);
    const spare = await ada('POST', `/api/v1/tenants/${tenant.id}/api-keys`, { body: { name: 'ada spare', permissions: ['tenants:read'] } });
    expect(spare.status).toBe(201);
    adaKey = from({ ip: ADA.ip, agent: ADA.keyAgent }, key.body.secret);
    // The key acts (an event whose actor is the key, from her address).
    expect((await adaKey('DELETE', `/api/v1/tenants/${tenant.id}/api-keys/${spare.body.id}`)).status).toBe(200);
    // Everything above is in the ledger once that is.
    await eventually(trail, (items) => eventsOf(items).some((e) => e.type === 'auth.api_key.revoked'), { what: "the key's revocation in the ledger" });
  });

  afterAll(async () => {
    await db?.end();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('the ledger holds only ciphertext of personal data; the audit API shows it decrypted', async () => {
    const stored = await storedLedger();
    for (const row of stored) for (const trace of [...ADA_TRACES, DPO.email, DPO.ip, DPO.agent]) expect(row.text).not.toContain(trace);
    expect(stored.some((r) => r.text.includes('"personal":"enc:v1:ip,userAgent:'))).toBe(true);

    const events = eventsOf(await trail());
    const created = events.find((e) => e.type === 'auth.user.created' && e.aggregateId === adaId)!;
    expect(created.data).toMatchObject({ email: ADA.email, name: ADA.name });
    expect(events.find((e) => e.type === 'auth.user.profile_updated' && e.aggregateId === adaId)!.data).toEqual({ name: ADA.renamed });
    expect(events.find((e) => e.type === 'auth.user.login_failed' && e.aggregateId === adaId)!.data).toEqual({ ip: ADA.ip });
    const started = events.filter((e) => e.type === 'auth.session.started' && e.actor.id === adaId);
    expect(started.length).toBe(2);
    for (const s of started) expect(s.actor).toMatchObject({ ip: ADA.ip, userAgent: ADA.agent });
    expect(events.find((e) => e.type === 'auth.api_key.revoked')!.actor).toMatchObject({ kind: 'api_key', ip: ADA.ip, userAgent: ADA.keyAgent });
    expect(events.find((e) => e.type === 'auth.user.roles_changed' && e.aggregateId === adaId)!.actor).toMatchObject({ id: dpoId, ip: DPO.ip, userAgent: DPO.agent });
  });

  it('the export holds her profile, sessions, key and every ledger entry she is actor or subject of, decrypted', async () => {
    const res = await dpo('GET', `/api/v1/tenants/${tenant.id}/users/${adaId}/personal-data`);
    expect(res.status).toBe(200);
    const doc = res.body;
    expect(doc.subject).toEqual({ tenantId: tenant.id, userId: adaId });
    expect(doc.user).toMatchObject({ id: adaId, email: ADA.email, name: ADA.renamed, roles: ['developer'], status: 'active' });
    expect(doc.sessions.length).toBe(2);
    expect(doc.apiKeys.map((k: { name: string }) => k.name)).toEqual(['ada laptop', 'ada spare']);
    expect(doc.mfa).toEqual({ totp: 'none', recoveryCodesLeft: 0 });
    // What the export must hold, found independently: every stored entry naming her, one of her sessions or her key
    // (her sealed values name her too: `enc:v1:<tenant>:<her id>:…`).
    const ids = [adaId, ...doc.sessions.map((s: { id: string }) => s.id), ...doc.apiKeys.map((k: { id: string }) => k.id)];
    const expected = (await storedLedger()).filter((r) => ids.some((id) => r.text.includes(id))).map((r) => Number(r.seq));
    expect(expected.length).toBeGreaterThanOrEqual(8);
    expect(doc.ledgerEntries.map((e: Entry) => e.seq)).toEqual(expected);
    const exported = eventsOf(doc.ledgerEntries);
    expect(exported.find((e) => e.type === 'auth.user.created')!.data).toMatchObject({ email: ADA.email });
    expect(exported.some((e) => e.actor.userAgent === ADA.agent && e.actor.ip === ADA.ip)).toBe(true);
    // Someone else acting on her is named, but their address and user agent are theirs, not hers.
    const byDpo = exported.find((e) => e.type === 'auth.user.roles_changed')!;
    expect(byDpo.actor).toEqual({ kind: 'user', id: dpoId, tenantId: tenant.id });
    expect(JSON.stringify(doc)).not.toContain(DPO.agent);
    // Another person's export holds nothing of hers, nor of the user that person created.
    const cy = await dpo('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: 'cy@acme.test', name: 'Cy Young', password: PASSWORD, roles: ['viewer'] } });
    expect(cy.status).toBe(201);
    const other = await eventually(
      () => dpo('GET', `/api/v1/tenants/${tenant.id}/users/${dpoId}/personal-data`),
      (r) => r.status === 200 && eventsOf(r.body.ledgerEntries).some((e) => e.type === 'auth.user.created' && e.aggregateId === cy.body.id),
      { what: "the administrator's export with the user they created" },
    );
    const made = eventsOf(other.body.ledgerEntries).find((e) => e.type === 'auth.user.created' && e.aggregateId === cy.body.id)!;
    expect(made.data).toMatchObject({ email: '[redacted]', name: '[redacted]' });
    expect(made.actor).toMatchObject({ id: dpoId, ip: DPO.ip, userAgent: DPO.agent });
    for (const trace of [...ADA_TRACES, 'cy@acme.test', 'Cy Young']) expect(JSON.stringify(other.body)).not.toContain(trace);
  });

  it('a sign-in with the longest user agent of the widest characters is sealed and read back, and the account still works', async () => {
    const wide = { email: ADA.email, ip: '198.51.100.8', agent: 'é'.repeat(600) };
    const failed = await from(wide)('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: ADA.email, password: 'wrong wrong wrong wrong' } });
    expect(failed.status).toBe(401);
    const events = eventsOf(await eventually(trail, (items) => eventsOf(items).some((e) => e.type === 'auth.user.login_failed' && e.actor.userAgent?.startsWith('é')), { what: 'the wide sign-in in the ledger' }));
    expect(events.find((e) => e.actor.userAgent?.startsWith('é'))!.actor.userAgent).toBe('é'.repeat(512));
    expect((await dpo('GET', `/api/v1/tenants/${tenant.id}/users/${adaId}`)).status).toBe(200);
    expect((await ada('GET', `/api/v1/tenants/${tenant.id}`)).status).toBe(200);
  });

  it('refuses an export or erasure without the permission, and bad ids, with problem+json', async () => {
    const viewer = await ada('GET', `/api/v1/tenants/${tenant.id}/users/${dpoId}/personal-data`);
    expect({ status: viewer.status, code: viewer.body.code }).toEqual({ status: 403, code: 'forbidden' });
    const erase = await ada('POST', `/api/v1/tenants/${tenant.id}/users/${dpoId}/erase`);
    expect({ status: erase.status, code: erase.body.code }).toEqual({ status: 403, code: 'forbidden' });
    const bad = await dpo('POST', `/api/v1/tenants/${tenant.id}/users/not-a-uuid/erase`);
    expect(bad.status).toBe(400);
    expect(bad.headers.get('content-type')).toContain('application/problem+json');
    const self = await dpo('POST', `/api/v1/tenants/${tenant.id}/users/${dpoId}/erase`);
    expect({ status: self.status, code: self.body.code }).toEqual({ status: 403, code: 'forbidden' });
  });

  /** Her key and the erasures projection's checkpoint as a backup taken now would hold them. */
  let backup: { dek: Buffer; checkpoint: string };

  it('after erasure nothing of her reads back: not in the API, not in a rebuilt read model; the ledger verifies; she is locked out; her email is free', async () => {
    backup = {
      dek: (await db.query(`SELECT dek_sealed FROM auth.subject_keys WHERE tenant_id = $1 AND subject_id = $2`, [tenant.id, adaId])).rows[0].dek_sealed,
      checkpoint: (await db.query(`SELECT position FROM auth.projection_checkpoints WHERE name = 'erasures'`)).rows[0].position,
    };
    expect(backup.dek).toBeInstanceOf(Buffer);
    const erased = await dpo('POST', `/api/v1/tenants/${tenant.id}/users/${adaId}/erase`);
    expect(erased.status).toBe(200);
    const key = await db.query(`SELECT dek_sealed, erased_at FROM auth.subject_keys WHERE tenant_id = $1 AND subject_id = $2`, [tenant.id, adaId]);
    expect({ dek: key.rows[0].dek_sealed, erased: key.rows[0].erased_at instanceof Date }).toEqual({ dek: null, erased: true });
    expect(erased.body).toMatchObject({ erased: true, userId: adaId, sessionsRevoked: 2 });
    // Her tokens and her key stop (revocation and the access change reach the gateway).
    await eventually(() => ada('GET', `/api/v1/tenants/${tenant.id}`), (r) => r.status === 401, { timeoutMs: 5_000, intervalMs: 50, what: 'her token refused' });
    await eventually(() => adaKey('GET', `/api/v1/tenants/${tenant.id}`), (r) => r.status === 401, { timeoutMs: 5_000, intervalMs: 50, what: 'her key refused' });
    const signIn = await from(ADA)('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: ADA.email, password: PASSWORD } });
    expect({ status: signIn.status, code: signIn.body.code }).toEqual({ status: 401, code: 'invalid_credentials' });

    // The one event of the erasure holds nothing personal.
    const after = eventsOf(await eventually(trail, (items) => eventsOf(items).some((e) => e.type === 'auth.user.erased'), { what: 'the erasure in the ledger' }));
    const event = after.find((e) => e.type === 'auth.user.erased')!;
    expect({ aggregateId: event.aggregateId, data: event.data, actor: event.actor.id }).toEqual({ aggregateId: adaId, data: {}, actor: dpoId });
    const text = JSON.stringify(after);
    for (const trace of ADA_TRACES) expect(text).not.toContain(trace);
    expect(after.find((e) => e.type === 'auth.user.created' && e.aggregateId === adaId)!.data).toMatchObject({ email: '[erased]', name: '[erased]' });
    expect(after.find((e) => e.type === 'auth.api_key.revoked')!.actor).toMatchObject({ kind: 'api_key', ip: '[erased]', userAgent: '[erased]' });
    // The others' data still reads.
    expect(after.find((e) => e.type === 'auth.user.created' && e.aggregateId === dpoId)!.data).toMatchObject({ email: DPO.email });
    expect(after.find((e) => e.type === 'auth.user.erased')!.actor).toMatchObject({ ip: DPO.ip, userAgent: DPO.agent });

    // Her user, from the log and from the read model; then the read model rebuilt from the ledger.
    const user = await dpo('GET', `/api/v1/tenants/${tenant.id}/users/${adaId}`);
    expect(user.body).toMatchObject({ status: 'erased', email: '[erased]', name: '[erased]', roles: [] });
    const listed = async () => (await dpo('GET', `/api/v1/tenants/${tenant.id}/users`)).body.items as { id: string; email: string; name: string; status: string }[];
    await eventually(listed, (items) => items.find((u) => u.id === adaId)?.status === 'erased', { what: 'the erasure in the users read model' });
    const rebuilt = await operator('POST', '/api/v1/admin/projections/auth.users/rebuild');
    expect(rebuilt.status).toBe(200);
    const rows = await listed();
    expect(rows.find((u) => u.id === adaId)).toMatchObject({ email: '[erased]', name: '[erased]', status: 'erased' });
    expect(rows.find((u) => u.id === dpoId)).toMatchObject({ email: DPO.email, status: 'active' });
    for (const trace of ADA_TRACES) expect(JSON.stringify(rows)).not.toContain(trace);
    const exported = await dpo('GET', `/api/v1/tenants/${tenant.id}/users/${adaId}/personal-data`);
    expect(exported.status).toBe(200);
    for (const trace of ADA_TRACES) expect(JSON.stringify(exported.body)).not.toContain(trace);

    // Erasing again changes nothing more.
    const again = await dpo('POST', `/api/v1/tenants/${tenant.id}/users/${adaId}/erase`);
    expect(again.status).toBe(200);
    expect(eventsOf(await trail()).filter((e) => e.type === 'auth.user.erased').length).toBe(1);

    const verify = await operator('GET', '/api/v1/audit/verify');
    expect(verify.status).toBe(200);
    expect(verify.body.ok).toBe(true);

    // Her email makes a new person, whose data reads.
    const reborn = await operator('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: ADA.email, name: 'Another Ada', password: PASSWORD, roles: ['viewer'] } });
    expect(reborn.status).toBe(201);
    expect(reborn.body.id).not.toBe(adaId);
    expect(await signIn2()).toBe(200);
    const theirs = eventsOf(await eventually(trail, (items) => eventsOf(items).some((e) => e.aggregateId === reborn.body.id), { what: 'the new user in the ledger' }));
    expect(theirs.find((e) => e.type === 'auth.user.created' && e.aggregateId === reborn.body.id)!.data).toMatchObject({ email: ADA.email, name: 'Another Ada' });
  });

  it('a key store restored from a backup taken before the erasure forgets her again when auth starts', async () => {
    await stack.kill('auth', 'SIGTERM');
    // The backup: her key as it was, and the erasures projection's checkpoint from before her erasure.
    await db.query(`UPDATE auth.subject_keys SET dek_sealed = $3, erased_at = NULL WHERE tenant_id = $1 AND subject_id = $2`, [tenant.id, adaId, backup.dek]);
    await db.query(`UPDATE auth.projection_checkpoints SET position = $1 WHERE name = 'erasures'`, [backup.checkpoint]);
    await stack.startOne('auth');
    const destroyed = await eventually(
      async () => (await db.query(`SELECT dek_sealed FROM auth.subject_keys WHERE tenant_id = $1 AND subject_id = $2`, [tenant.id, adaId])).rows[0].dek_sealed,
      (dek) => dek === null,
      { timeoutMs: 30_000, intervalMs: 100, what: 'her restored key destroyed again' },
    );
    expect(destroyed).toBeNull();
  });

  const signIn2 = async () => (await from(ADA)('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: ADA.email, password: PASSWORD } })).status;
});
