import { Client } from 'pg';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

type Http = ReturnType<typeof httpClient>;
const PASSWORD = 'correct horse battery staple';
const MINUTE = 60_000;

/**
 * Usage metering end to end (issue 8, first part): real billing, audit, auth, tenant and gateway
 * processes, Postgres, NATS and Redis. Prices are published and validated; a tenant admin's
 * product reports usage in batches; each record counts once whatever is sent again; corrections
 * amend and cancel; reports add up exactly, by any grouping, in JSON and CSV; a price fix is
 * applied by re-rating; the read model rebuilt from the ledger equals the live one.
 */
describe('billing: usage records, prices and reports', () => {
  const env = isolatedEnv('billing');
  const stack = new Stack(env);
  let operator: Http;
  let admin: Http;
  let viewer: Http;
  let db: Client;
  let tenantId: string;
  // Whole minutes in the last hours, so that ranges can cut between records.
  const base = Math.floor(Date.now() / MINUTE) * MINUTE - 3 * 60 * MINUTE;
  const at = (minutes: number) => new Date(base + minutes * MINUTE).toISOString();

  const signIn = async (slug: string, email: string) => {
    const res = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: slug, email, password: PASSWORD } });
    expect(res.status).toBe(200);
    return httpClient(stack.gatewayUrl, res.body.accessToken);
  };
  /** Reports usage and waits until the read model has applied it (the largest position answered). */
  const report = async (records: unknown[], who: Http = admin, source?: string) => {
    const res = await who('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { ...(source ? { source } : {}), records } });
    expect(res.status).toBe(202);
    const positions = res.body.results.map((r: { position?: number }) => r.position ?? 0);
    return { ...res.body, position: Math.max(0, ...positions) };
  };
  const usage = async (query: string, position = 0) => {
    const res = await admin('GET', `/api/v1/tenants/${tenantId}/usage/report?${query}${position ? `&consistentWith=${position}` : ''}`);
    if (res.status !== 200) throw new Error(JSON.stringify(res.body));
    return res.body;
  };
  const record = async (id: string, position = 0) => (await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/${id}${position ? `?consistentWith=${position}` : ''}`)).body;
  const range = `from=${encodeURIComponent(at(-60))}&to=${encodeURIComponent(at(120))}`;

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'billing', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'metered', name: 'Metered', plan: 'enterprise' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    await operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${created.body.position}`);
    for (const [email, role] of [['admin@metered.test', 'tenant_admin'], ['viewer@metered.test', 'viewer']]) {
      const user = await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: role, password: PASSWORD, roles: [role] } });
      expect(user.status).toBe(201);
    }
    admin = await signIn('metered', 'admin@metered.test');
    viewer = await signIn('metered', 'viewer@metered.test');
  });

  afterAll(async () => {
    await db?.end();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('validates prices before they take effect, and only platform administrators publish them', async () => {
    const good = { model: 'GPT-4o', aliases: ['gpt-4o-2024-08-06'], rates: { inputPerMTok: '2.5', cachedInputPerMTok: '1.25', outputPerMTok: '10' }, effectiveFrom: at(-24 * 60) };
    const published = await operator('POST', '/api/v1/billing/prices', { body: good });
    expect(published.status).toBe(201);
    expect(published.body).toMatchObject({ scope: 'platform', model: 'gpt-4o', version: 1, aliases: ['gpt-4o-2024-08-06'] });
    const gpu = await operator('POST', '/api/v1/billing/prices', { body: { model: 'llama-3-70b', rates: { gpuHour: { H100: '4' } }, effectiveFrom: at(-24 * 60) } });
    expect(gpu.status).toBe(201);

    for (const [body, field] of [
      [{ ...good, rates: { inputPerMTok: '25000' } }, 'rates.inputPerMTok'],
      [{ ...good, rates: {} }, 'rates'],
      [{ ...good, rates: { inputPerMTok: '1e3' } }, 'rates.inputPerMTok'],
      [{ ...good, rates: { inputPerMTok: '1', cachedInputPerMTok: '2' } }, 'rates.cachedInputPerMTok'],
      [{ ...good, effectiveTo: at(-48 * 60) }, 'effectiveTo'],
      [{ ...good, aliases: ['gpt-4o-mini', 'GPT-4o-Mini'] }, 'aliases'],
      [{ ...good, effectiveFrom: '0000-01-01T00:30:00+01:00' }, 'effectiveFrom'],
    ] as const) {
      const res = await operator('POST', '/api/v1/billing/prices', { body });
      expect(res.status).toBe(400);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.body.errors.map((f: { field: string }) => f.field)).toContain(field);
    }
    // An alias names one model: another model cannot take it.
    const clash = await operator('POST', '/api/v1/billing/prices', { body: { ...good, model: 'other', aliases: ['gpt-4o-2024-08-06'] } });
    expect(clash.status).toBe(409);
    expect((await admin('POST', '/api/v1/billing/prices', { body: good })).status).toBe(403);
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/prices`, { body: good })).status).toBe(403);

    const list = await admin('GET', `/api/v1/tenants/${tenantId}/prices?consistentWith=${gpu.body.position}`);
    expect(list.status).toBe(200);
    expect(list.body.items.map((p: { model: string }) => p.model).sort()).toEqual(['gpt-4o', 'llama-3-70b']);
    expect((await viewer('GET', `/api/v1/tenants/${tenantId}/prices`)).status).toBe(403);
  });

  it('counts each record once, refuses what it cannot rate or date, and reports costs that add up', async () => {
    const records = [
      { id: 'r1', occurredAt: at(0), model: 'gpt-4o-2024-08-06', attribution: { userId: 'u1', teamId: 'alpha', costCenter: 'cc-1' }, quantities: { inputTokens: '1000', outputTokens: 500 } },
      { id: 'r2', occurredAt: at(1), model: 'gpt-4o', attribution: { userId: 'u2', teamId: 'beta' }, quantities: { inputTokens: '100', cachedInputTokens: '2000' } },
      { id: 'r1', occurredAt: at(2), model: 'gpt-4o', quantities: { inputTokens: '999999' } },
      { id: 'r3', occurredAt: at(3), model: 'mystery-model', quantities: { inputTokens: '10' } },
      { id: 'r4', occurredAt: new Date(Date.now() - 40 * 86_400_000).toISOString(), model: 'gpt-4o', quantities: { inputTokens: '10' } },
      { id: 'r5', occurredAt: at(90), model: 'llama-3-70b', gpuType: 'H100', attribution: { teamId: 'alpha', projectId: 'finetune' }, quantities: { gpuSeconds: '3600' } },
      { id: 'r6', occurredAt: at(4), model: 'llama-3-70b', gpuType: 'A100', quantities: { gpuSeconds: '60' } },
    ];
    const first = await report(records);
    expect(first.results.map((r: { status: string }) => r.status)).toEqual(['accepted', 'accepted', 'duplicate', 'refused', 'refused', 'accepted', 'refused']);
    expect(first.results[3].reason).toContain('no price for model "mystery-model"');
    expect(first.results[4].reason).toContain('more than 35 days ago');
    expect(first.results[6].reason).toContain('gpuHour.A100');
    expect(first).toMatchObject({ accepted: 3, duplicates: 1, refused: 3 });

    // Sent twice more (a retry, a replay): nothing counts again.
    await report(records);
    await report(records);
    const expected = { inputTokens: '1100', cachedInputTokens: '2000', outputTokens: '500', gpuSeconds: '3600', cost: '4.01025', records: 3, unpricedRecords: 0 };
    // r1 = 1000 × 2.5 + 500 × 10 per million; r2 = 100 × 2.5 + 2000 × 1.25 per million; r5 = one H100-hour at 4.
    await eventually(() => usage(range, first.position), (r) => r.total.records === 3, { timeoutMs: 30_000, what: 'the usage applied' });
    const again = await usage(range);
    expect(again.total).toMatchObject(expected);
    expect(await record('r1')).toMatchObject({ model: 'gpt-4o', cost: '0.0075', priced: true, price: { scope: 'platform', model: 'gpt-4o', version: 1 }, attribution: { userId: 'u1', teamId: 'alpha', costCenter: 'cc-1' } });
    expect(Number((await db.query(`SELECT count(*) AS n FROM billing.usage_facts WHERE tenant_id = $1`, [tenantId])).rows[0].n)).toBe(3);

    // Every grouping adds up to the total, exactly.
    for (const groupBy of ['team', 'user', 'model', 'team,user,model', 'costCenter,project', 'environment,apiKey']) {
      const r = await usage(`${range}&groupBy=${groupBy}`);
      expect(r.groupBy).toEqual(groupBy.split(','));
      const sum = (k: string) => r.rows.reduce((s: bigint, row: Record<string, string>) => s + BigInt(Math.round(Number(row[k]) * 1e9)), 0n);
      expect(sum('cost')).toBe(BigInt(Math.round(4.01025 * 1e9)));
      expect(r.rows.reduce((s: number, row: { records: number }) => s + row.records, 0)).toBe(3);
      expect(r.total).toMatchObject(expected);
    }
    const byTeam = await usage(`${range}&groupBy=team`);
    expect(byTeam.rows).toEqual([
      expect.objectContaining({ key: { team: 'alpha' }, cost: '4.0075', records: 2 }),
      expect.objectContaining({ key: { team: 'beta' }, cost: '0.00275', records: 1 }),
    ]);
    // A range that ends between r2 and r5 holds only the first two (minutes, hours and days added exactly).
    const early = await usage(`from=${encodeURIComponent(at(-1))}&to=${encodeURIComponent(at(89))}`);
    expect(early.total).toMatchObject({ cost: '0.01025', records: 2 });

    const csv = await admin('GET', `/api/v1/tenants/${tenantId}/usage/report?${range}&groupBy=team&format=csv`);
    expect(csv.status).toBe(200);
    expect(csv.headers.get('content-type')).toContain('text/csv');
    const lines = (csv.body as string).trim().split('\n');
    expect(lines[0]).toBe('team,inputTokens,cachedInputTokens,outputTokens,requests,gpuSeconds,cost,records,unpricedRecords');
    expect(lines.at(-1)).toBe('TOTAL,1100,2000,500,0,3600,4.01025,3,0');

    for (const [query, field] of [
      ['groupBy=team', 'from'],
      [`${range}&groupBy=colour`, 'groupBy'],
      [`period=2026-13`, 'period'],
      [`period=2026-11&timeZone=Mars/Olympus`, 'timeZone'],
      [`from=${encodeURIComponent(new Date(base + 30_000).toISOString())}&to=${encodeURIComponent(at(10))}`, 'from'],
    ]) {
      const res = await admin('GET', `/api/v1/tenants/${tenantId}/usage/report?${query}`);
      expect(res.status).toBe(400);
      expect(res.body.errors.map((f: { field: string }) => f.field)).toContain(field);
    }
    // An API key reports its own usage: its id is the records' apiKeyId, and it cannot name another.
    const key = await admin('POST', `/api/v1/tenants/${tenantId}/api-keys`, { body: { name: 'product', permissions: ['usage:write', 'usage:read'] } });
    expect(key.status).toBe(201);
    const product = httpClient(stack.gatewayUrl, key.body.secret);
    const byKey = await product('POST', `/api/v1/tenants/${tenantId}/usage`, {
      body: { records: [
        { id: 'k1', occurredAt: at(6), model: 'gpt-4o', quantities: { inputTokens: '0' } },
        { id: 'k2', occurredAt: at(6), model: 'gpt-4o', attribution: { apiKeyId: 'someone-else' }, quantities: { inputTokens: '0' } },
      ] },
    });
    expect(byKey.status).toBe(202);
    expect(byKey.body.results.map((r: { status: string }) => r.status)).toEqual(['accepted', 'refused']);
    expect(byKey.body.results[1].reason).toContain('names another API key');
    expect(await record('k1', byKey.body.results[0].position)).toMatchObject({ attribution: { apiKeyId: key.body.id } });
    expect((await product('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id: 'k1-undo', kind: 'cancel', target: 'k1' }] } })).body.accepted).toBe(1);
    const bad = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id: 'x', occurredAt: at(0), model: 'gpt-4o', quantities: { inputTokens: '-1' } }] } });
    expect(bad.status).toBe(400);
    expect(bad.body.errors.map((f: { field: string }) => f.field)).toContain('records.0.quantities.inputTokens');
    expect((await viewer('GET', `/api/v1/tenants/${tenantId}/usage/report?${range}`)).status).toBe(403);
    expect((await viewer('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records } })).status).toBe(403);
  });

  it('applies amends and cancels, even one that arrives before its record', async () => {
    const corrected = await report([
      { id: 'fix-r2', kind: 'amend', target: 'r2', model: 'gpt-4o', attribution: { userId: 'u2', teamId: 'beta' }, quantities: { inputTokens: '200' } },
      { id: 'drop-r1', kind: 'cancel', target: 'r1' },
      { id: 'drop-r9', kind: 'cancel', target: 'r9' },
    ]);
    expect(corrected.accepted).toBe(3);
    const late = await report([{ id: 'r9', occurredAt: at(5), model: 'gpt-4o', quantities: { inputTokens: '1000000' } }]);
    expect(late.accepted).toBe(1);
    // r1 cancelled, r2 now 200 input tokens (0.0005), r9 cancelled before it came: r5's 4 and r2's 0.0005 remain.
    const r = await usage(range, late.position);
    expect(r.total).toMatchObject({ cost: '4.0005', records: 2, inputTokens: '200', cachedInputTokens: '0' });
    expect(await record('r1')).toMatchObject({ status: 'cancelled', corrections: 1 });
    expect(await record('r2')).toMatchObject({ status: 'active', corrections: 1, cost: '0.0005', quantities: { inputTokens: '200', cachedInputTokens: '0' } });
    expect(await record('r9')).toMatchObject({ status: 'cancelled', corrections: 1 });
    // A correction corrects a record: not itself, nor another correction.
    const wrong = await report([
      { id: 'self', kind: 'cancel', target: 'self' },
      { id: 'meta', kind: 'cancel', target: 'drop-r1' },
    ]);
    expect(wrong.results.map((r: { status: string }) => r.status)).toEqual(['refused', 'refused']);
    expect(wrong.results[1].reason).toContain('is a correction, not a record');
    // The same correction again counts nothing.
    const twice = await report([{ id: 'fix-r2', kind: 'amend', target: 'r2', model: 'gpt-4o', quantities: { inputTokens: '5' } }]);
    expect(twice.results[0].status).toBe('duplicate');
    const missing = await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/nope`);
    expect(missing.status).toBe(404);
  });

  it('re-rates a period after a price fix without deleting anything, and rebuilds the same model from the ledger', async () => {
    const fix = await operator('POST', '/api/v1/billing/prices', {
      body: { model: 'gpt-4o', aliases: ['gpt-4o-2024-08-06'], rates: { inputPerMTok: '5', outputPerMTok: '10' }, effectiveFrom: at(-24 * 60) },
    });
    expect(fix.status).toBe(201);
    expect(fix.body.version).toBe(2);
    // Until re-rated, r2 keeps the version that rated it.
    expect(await record('r2', fix.body.position)).toMatchObject({ cost: '0.0005', price: { version: 1 } });
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/usage/rerate`, { body: { from: at(-60), to: at(120), reason: 'input price fix' } })).status).toBe(403);
    const rerated = await operator('POST', `/api/v1/tenants/${tenantId}/usage/rerate`, { body: { from: at(-60), to: at(120), reason: 'input price fix' } });
    expect(rerated.status).toBe(202);
    expect(await record('r2', rerated.body.position)).toMatchObject({ cost: '0.001', price: { version: 2 } });
    expect((await usage(range)).total).toMatchObject({ cost: '4.001', records: 2 });

    const snapshot = async () => ({
      records: (await db.query('SELECT * FROM billing.usage_records ORDER BY tenant_id, source, record_id')).rows,
      rollups: (await db.query('SELECT * FROM billing.usage_rollups ORDER BY tenant_id, grain, bucket, model, user_id, team_id, project_id, cost_center, environment, api_key_id')).rows,
      facts: (await db.query('SELECT * FROM billing.usage_facts ORDER BY tenant_id, source, fact_id')).rows,
      prices: (await db.query('SELECT * FROM billing.prices ORDER BY scope, model, version')).rows,
      pending: (await db.query('SELECT * FROM billing.pending_corrections ORDER BY tenant_id, source, fact_id')).rows,
    });
    await eventually(
      async () => Number((await db.query('SELECT coalesce(max(seq), 0) AS s FROM audit.ledger')).rows[0].s),
      (head) => head >= rerated.body.position,
      { timeoutMs: 30_000, what: 'the ledger' },
    );
    const live = await snapshot();
    expect(live.records.length).toBe(5);
    const rebuilt = await operator('POST', '/api/v1/admin/projections/billing.usage/rebuild');
    expect(rebuilt.status).toBe(200);
    expect(await snapshot()).toEqual(live);
    const listed = await operator('GET', '/api/v1/admin/projections');
    expect(listed.body.items ?? listed.body).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'billing.usage', healthy: true })]));
  });
});
