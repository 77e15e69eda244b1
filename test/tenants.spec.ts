import { connect, NatsConnection } from 'nats';
import { allPermissions } from '@keel/contracts';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

/** End to end through the gateway, with the real audit, tenant and gateway processes. */
describe('tenants through the gateway', () => {
  const env = isolatedEnv('tenants');
  const stack = new Stack(env);
  let nc: NatsConnection;
  let http: ReturnType<typeof httpClient>;

  const lastSeq = async () => (await (await nc.jetstreamManager()).streams.info(env.KEEL_STREAM!)).state.last_seq;
  const create = async (slug: string, extra: Record<string, unknown> = {}) => {
    const res = await http('POST', '/api/v1/tenants', { body: { slug, name: `Tenant ${slug}`, plan: 'starter', ...extra } });
    expect(res.status).toBe(201);
    return res.body as { tenant: { id: string; version: number }; version: number; position: number };
  };

  const ledgerReaches = async (position: number) => {
    await eventually(
      () => http('GET', '/api/v1/audit/events?limit=1'),
      (head) => (head.body.items?.[0]?.seq ?? 0) >= position,
      { timeoutMs: 60_000, intervalMs: 100, what: `the ledger to reach ${position}` },
    );
  };
  /** A read with consistentWith, asked again after a consistency_timeout (503) while the read model catches up. */
  const readConsistent = (path: string) =>
    // Only a consistency_timeout is asked again: any other answer (a 404 from a read that did not
    // wait, say) is the answer, and the caller checks it.
    eventually(() => http('GET', path), (r) => !(r.status === 503 && r.body?.code === 'consistency_timeout'), {
      timeoutMs: 30_000,
      intervalMs: 100,
      what: `${path} to answer other than consistency_timeout`,
    });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    http = httpClient(stack.gatewayUrl, stack.token);
    nc = await connect({ servers: env.NATS_URL });
  });

  afterAll(async () => {
    await nc?.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('refuses every request without the operator token', async () => {
    const anonymous = httpClient(stack.gatewayUrl);
    const wrong = httpClient(stack.gatewayUrl, 'not-the-token-at-all');
    for (const client of [anonymous, wrong]) {
      const res = await client('GET', '/api/v1/tenants');
      expect(res.status).toBe(401);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.body.code).toBe('unauthorized');
    }
  });

  it('creates a tenant, answers with version and position, and reads it back by id and slug', async () => {
    const created = await create('acme-corp');
    expect(created.version).toBe(1);
    expect(created.position).toBeGreaterThan(0);
    expect(created.tenant).toMatchObject({ slug: 'acme-corp', plan: 'starter', status: 'active', quotas: { maxUsers: 10 } });
    const byId = await readConsistent(`/api/v1/tenants/${created.tenant.id}?consistentWith=${created.position}`);
    expect(byId.status).toBe(200);
    expect(byId.body).toMatchObject({ id: created.tenant.id, version: 1 });
    expect(byId.headers.get('etag')).toBe('"1"');
    const bySlug = await http('GET', '/api/v1/tenants/acme-corp');
    expect(bySlug.body.id).toBe(created.tenant.id);
    const dup = await http('POST', '/api/v1/tenants', { body: { slug: 'acme-corp', name: 'Again', plan: 'starter' } });
    expect(dup.status).toBe(409);
    expect(dup.body.code).toBe('slug_taken');
  });

  it('GET /tenants/{id}, served on Fastify directly, answers as the Nest routes do: headers, problems, nothing else', async () => {
    const created = await create('direct-read');
    const path = `/api/v1/tenants/${created.tenant.id}`;
    const ok = await readConsistent(`${path}?consistentWith=${created.position}`);
    expect(ok.status).toBe(200);
    expect(ok.headers.get('content-type')).toBe('application/json; charset=utf-8');
    // The same JSON as the tenant's read model answers over NATS, and the version as its ETag.
    expect(ok.body).toEqual((await http('GET', `/api/v1/tenants?limit=100`)).body.items.find((t: { id: string }) => t.id === created.tenant.id));
    expect(ok.headers.get('etag')).toBe('"1"');
    const traced = await http('GET', path, { headers: { 'x-request-id': 'direct-read-1' } });
    expect(traced.headers.get('x-request-id')).toBe('direct-read-1');
    // No id is no route (404 before any credential is asked for), as Nest answers an empty parameter.
    const empty = await httpClient(stack.gatewayUrl)('GET', '/api/v1/tenants/');
    expect({ status: empty.status, code: empty.body?.code }).toEqual({ status: 404, code: 'not_found' });

    // A user of the tenant (a JWT verified once, then from the cache; the tenant from the directory;
    // the plan's limit from a lease) reads it twice; another tenant is not found for them.
    const other = await create('direct-other');
    // A plan of 60,000 a minute: its requests are served from leases (see the rate limiter).
    const busy = await create('direct-busy', { plan: 'custom', quotas: { maxUsers: 5, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 60_000 } });
    await readConsistent(`/api/v1/tenants/${busy.tenant.id}?consistentWith=${busy.position}`);
    const user = await http('POST', `/api/v1/tenants/${busy.tenant.id}/users`, { body: { email: 'reader@direct.test', name: 'Reader', password: 'correct horse battery staple', roles: ['viewer'] } });
    expect(user.status).toBe(201);
    const signedIn = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'direct-busy', email: 'reader@direct.test', password: 'correct horse battery staple' } });
    expect(signedIn.status).toBe(200);
    const reader = httpClient(stack.gatewayUrl, signedIn.body.accessToken);
    const busyPath = `/api/v1/tenants/${busy.tenant.id}`;
    const operatorView = await http('GET', busyPath);
    const remaining: number[] = [];
    for (let i = 0; i < 3; i++) {
      const own = await reader('GET', busyPath);
      expect({ i, status: own.status, limit: own.headers.get('ratelimit-limit'), etag: own.headers.get('etag') }).toEqual({ i, status: 200, limit: '60000', etag: '"1"' });
      expect(own.body).toEqual(operatorView.body);
      remaining.push(Number(own.headers.get('ratelimit-remaining')));
    }
    // Counted down one by one, from a lease (the first request took it).
    expect(remaining[1]).toBe(remaining[0]! - 1);
    expect(remaining[2]).toBe(remaining[1]! - 1);
    const elsewhere = await reader('GET', `/api/v1/tenants/${other.tenant.id}`);
    expect({ status: elsewhere.status, code: elsewhere.body.code }).toEqual({ status: 404, code: 'not_found' });

    const problems: [string, ReturnType<typeof httpClient>, string, number, string, string[]?][] = [
      ['no token', httpClient(stack.gatewayUrl), path, 401, 'unauthorized'],
      ['a token that is not one', httpClient(stack.gatewayUrl, 'x'.repeat(40)), path, 401, 'unauthorized'],
      ['an unknown query', http, `${path}?sideways=1`, 400, 'validation_failed', ['(whole)']],
      ['a bad consistentWith', http, `${path}?consistentWith=soon`, 400, 'validation_failed', ['consistentWith']],
      ['NUL in the id', http, '/api/v1/tenants/a%00b', 400, 'validation_failed', ['idOrSlug']],
      ['no such tenant', http, '/api/v1/tenants/01a23bc6-1024-704a-87c2-d9b28adc6223', 404, 'not_found'],
      ['no such slug', http, '/api/v1/tenants/nobody-here', 404, 'not_found'],
    ];
    for (const [what, client, url, status, code, fields] of problems) {
      const r = await client('GET', url);
      expect({ what, status: r.status, code: r.body?.code, type: r.headers.get('content-type') }).toEqual({ what, status, code, type: 'application/problem+json; charset=utf-8' });
      expect({ what, instance: r.body.instance, title: typeof r.body.title }).toEqual({ what, instance: url, title: 'string' });
      if (fields) expect({ what, fields: r.body.errors.map((e: { field: string }) => e.field) }).toEqual({ what, fields });
      if (status === 401) expect(r.headers.get('www-authenticate')).toBe('Bearer realm="keel"');
      expect(r.headers.get('x-request-id')).toBeTruthy();
    }
  });

  it('walks the lifecycle and refuses invalid transitions', async () => {
    const { tenant } = await create('lifecycle-co');
    const id = tenant.id;
    expect((await http('POST', `/api/v1/tenants/${id}/reactivate`)).body.code).toBe('invalid_transition');
    const suspended = await http('POST', `/api/v1/tenants/${id}/suspend`, { body: { reason: 'invoice overdue' } });
    expect(suspended.status).toBe(200);
    expect(suspended.body.tenant).toMatchObject({ status: 'suspended', suspendedReason: 'invoice overdue' });
    expect((await http('POST', `/api/v1/tenants/${id}/suspend`, { body: { reason: 'again' } })).status).toBe(409);
    expect((await http('POST', `/api/v1/tenants/${id}/reactivate`)).body.tenant.status).toBe('active');
    const settings = await http('PATCH', `/api/v1/tenants/${id}/settings`, {
      body: { mfaRequired: true, allowedIpRanges: ['10.0.0.0/8', '2001:db8::/32'] },
    });
    expect(settings.status).toBe(200);
    expect(settings.body.tenant.settings).toMatchObject({ mfaRequired: true, allowedIpRanges: ['10.0.0.0/8', '2001:db8::/32'], sessionTimeoutMinutes: 480 });
    const closed = await http('DELETE', `/api/v1/tenants/${id}`);
    expect(closed.status).toBe(200);
    expect(closed.body.tenant.status).toBe('closed');
    const before = await lastSeq();
    for (const [method, path, body] of [
      ['POST', `/api/v1/tenants/${id}/reactivate`, undefined],
      ['PATCH', `/api/v1/tenants/${id}/plan`, { plan: 'enterprise' }],
      ['DELETE', `/api/v1/tenants/${id}`, undefined],
    ] as const) {
      const res = await http(method, path, { body });
      expect(res.status).toBe(409);
      expect(res.body.code).toBe('tenant_closed');
    }
    expect(await lastSeq()).toBe(before);
    const missing = await http('PATCH', '/api/v1/tenants/01890a5d-ac96-774b-bcce-b302099a8057/plan', { body: { plan: 'enterprise' } });
    expect(missing.status).toBe(404);
  });

  it('50 concurrent plan changes with the same If-Match: exactly one applies, the rest get 412', async () => {
    const { tenant } = await create('if-match-co');
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        http('PATCH', `/api/v1/tenants/${tenant.id}/plan`, {
          headers: { 'if-match': '"1"' },
          body: { plan: 'custom', quotas: { maxUsers: 100 + i, maxGpus: 1, maxGpuMemoryGb: 80, monthlyTokenQuota: 1000, requestsPerMinute: 60 } },
        }),
      ),
    );
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 412)).toHaveLength(49);
    expect(results.find((r) => r.status === 412)!.body.code).toBe('version_mismatch');
    const after = await readConsistent(`/api/v1/tenants/${tenant.id}?consistentWith=${results.find((r) => r.status === 200)!.body.position}`);
    expect(after.status).toBe(200);
    expect(after.body.version).toBe(2);
  });

  it('50 concurrent plan changes without If-Match: all apply, versions contiguous, none lost', async () => {
    const { tenant } = await create('no-lost-update');
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        http('PATCH', `/api/v1/tenants/${tenant.id}/plan`, {
          body: { plan: 'custom', quotas: { maxUsers: 1000 + i, maxGpus: 2, maxGpuMemoryGb: 160, monthlyTokenQuota: 10, requestsPerMinute: 60 } },
        }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(50).fill(200));
    const versions = results.map((r) => r.body.version).sort((a, b) => a - b);
    expect(versions).toEqual(Array.from({ length: 50 }, (_, i) => i + 2));
    const last = Math.max(...results.map((r) => r.body.position));
    const read = await readConsistent(`/api/v1/tenants/${tenant.id}?consistentWith=${last}`);
    expect(read.status).toBe(200);
    expect(read.body.version).toBe(51);
    await ledgerReaches(last);
    const events = await http('GET', `/api/v1/audit/events?aggregateId=${tenant.id}&type=tenant.tenant.plan_changed&limit=100&order=asc`);
    expect(events.body.items.map((e: { event: { aggregateVersion: number } }) => e.event.aggregateVersion)).toEqual(versions);
  });

  it('a retried POST with the same Idempotency-Key writes one event and returns the first answer', async () => {
    const body = { slug: 'idempotent-co', name: 'Idempotent', plan: 'professional' };
    const first = await http('POST', '/api/v1/tenants', { body, headers: { 'idempotency-key': 'key-123' } });
    const before = await lastSeq();
    const retries = await Promise.all([1, 2, 3].map(() => http('POST', '/api/v1/tenants', { body, headers: { 'idempotency-key': 'key-123' } })));
    expect(first.status).toBe(201);
    for (const r of retries) {
      expect(r.status).toBe(201);
      expect(r.body).toEqual(first.body);
      expect(r.headers.get('idempotent-replayed')).toBe('true');
    }
    expect(await lastSeq()).toBe(before);
    const reused = await http('POST', '/api/v1/tenants', { body: { ...body, slug: 'other-co' }, headers: { 'idempotency-key': 'key-123' } });
    expect(reused.status).toBe(422);
    expect(reused.body.code).toBe('idempotency_key_reused');
    expect(await lastSeq()).toBe(before);
  });

  const malformed: [string, string, string, { body?: unknown; rawBody?: string; headers?: Record<string, string> }, string[]][] = [
    ['wrong types', 'POST', '/api/v1/tenants', { body: { slug: 42, name: true, plan: ['starter'] } }, ['slug', 'name', 'plan']],
    ['missing fields', 'POST', '/api/v1/tenants', { body: {} }, ['slug', 'name', 'plan']],
    ['bad slug', 'POST', '/api/v1/tenants', { body: { slug: 'Bad_Slug', name: 'x', plan: 'starter' } }, ['slug']],
    ['slug too short', 'POST', '/api/v1/tenants', { body: { slug: 'ab', name: 'x', plan: 'starter' } }, ['slug']],
    ['unknown plan', 'POST', '/api/v1/tenants', { body: { slug: 'good-slug', name: 'x', plan: 'gold' } }, ['plan']],
    ['custom plan without quotas', 'POST', '/api/v1/tenants', { body: { slug: 'good-slug', name: 'x', plan: 'custom' } }, ['quotas']],
    ['unknown field', 'POST', '/api/v1/tenants', { body: { slug: 'good-slug', name: 'x', plan: 'starter', admin: true } }, ['(whole)']],
    ['bad JSON', 'POST', '/api/v1/tenants', { rawBody: '{"slug": "x",' }, []],
    ['JSON array body', 'POST', '/api/v1/tenants', { rawBody: '[1,2]' }, ['(whole)']],
    ['oversized body', 'POST', '/api/v1/tenants', { body: { slug: 'big-one', name: 'x'.repeat(70_000), plan: 'starter' } }, []],
    ['bad CIDR', 'PATCH', '/api/v1/tenants/{id}/settings', { body: { allowedIpRanges: ['10.0.0.0/33', '300.1.1.1/8', '10.0.0.1/8', 'nope'] } }, ['allowedIpRanges.0', 'allowedIpRanges.1', 'allowedIpRanges.2', 'allowedIpRanges.3']],
    ['settings out of range', 'PATCH', '/api/v1/tenants/{id}/settings', { body: { sessionTimeoutMinutes: 0, maxConcurrentSessions: 'many' } }, ['sessionTimeoutMinutes', 'maxConcurrentSessions']],
    ['empty settings', 'PATCH', '/api/v1/tenants/{id}/settings', { body: {} }, ['(whole)']],
    ['suspend without reason', 'POST', '/api/v1/tenants/{id}/suspend', { body: {} }, ['reason']],
    ['id not a UUID', 'PATCH', '/api/v1/tenants/not-a-uuid/plan', { body: { plan: 'starter' } }, ['id']],
    ['bad If-Match', 'PATCH', '/api/v1/tenants/{id}/plan', { body: { plan: 'enterprise' }, headers: { 'if-match': 'yesterday' } }, ['If-Match']],
    ['bad query', 'GET', '/api/v1/tenants?limit=0&order=sideways', {}, ['limit', '(whole)']],
    ['bad Idempotency-Key', 'POST', '/api/v1/tenants', { body: { slug: 'fine-slug', name: 'x', plan: 'starter' }, headers: { 'idempotency-key': 'x'.repeat(300) } }, ['Idempotency-Key']],
  ];

  it.each(malformed)('%s → 4xx problem+json naming every bad field, nothing appended', async (_name, method, path, request, fields) => {
    const { tenant } = await create(`m-${Math.random().toString(36).slice(2, 10)}`);
    const before = await lastSeq();
    const res = await http(method, path.replace('{id}', tenant.id), request);
    expect(res.status === 400 || res.status === 413).toBe(true);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(res.body).toMatchObject({ status: res.status, type: expect.any(String), title: expect.any(String), detail: expect.any(String) });
    expect(['validation_failed', 'bad_json', 'payload_too_large']).toContain(res.body.code);
    const named = (res.body.errors ?? []).map((e: { field: string }) => e.field);
    for (const f of fields) expect(named).toContain(f);
    expect(await lastSeq()).toBe(before);
  });

  it('lists tenants with cursor pagination in creation order', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: { status: number; body: { items: { id: string }[]; nextCursor: string | null } } = await http(
        'GET',
        `/api/v1/tenants?limit=3${cursor ? `&cursor=${cursor}` : ''}`,
      );
      expect(page.status).toBe(200);
      expect(page.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...page.body.items.map((t) => t.id));
      cursor = page.body.nextCursor;
    } while (cursor);
    expect(new Set(seen).size).toBe(seen.length);
    expect([...seen].sort()).toEqual(seen);
    expect(seen.length).toBeGreaterThanOrEqual(5);
  });

  it('serves the audit trail and verifies it', async () => {
    const { tenant, position } = await create('audited-co');
    await ledgerReaches(position);
    const events = await http('GET', `/api/v1/audit/events?tenantId=${tenant.id}`);
    expect(events.status).toBe(200);
    expect(events.body.items).toHaveLength(1);
    expect(events.body.items[0]).toMatchObject({ seq: position, event: { type: 'tenant.tenant.created', aggregateId: tenant.id, actor: { id: 'bootstrap-operator' } } });
    expect(events.body.items[0].hash).toMatch(/^[0-9a-f]{64}$/);
    const verify = await http('GET', `/api/v1/audit/verify?toSeq=${position}`);
    expect(verify.body).toMatchObject({ ok: true, lastSeq: position, checked: position });
    expect((await http('GET', '/api/v1/audit/verify?fromSeq=5&toSeq=2')).status).toBe(400);
  });

  it('publishes an OpenAPI document in which every API route declares its permission', async () => {
    const doc = await httpClient(stack.gatewayUrl)('GET', '/openapi.json');
    expect(doc.status).toBe(200);
    const operations = Object.entries(doc.body.paths as Record<string, Record<string, { 'x-permission': string }>>).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => ({ path, method, permission: op['x-permission'] })),
    );
    expect(operations.length).toBeGreaterThanOrEqual(11);
    // Every API route declares a permission of the catalogue; only sign-in, SSO and published
    // keys are public, and only the caller's own account routes need just a signed-in caller.
    for (const op of operations.filter((o) => o.path.startsWith('/api/'))) {
      if (op.permission === 'public') expect(op.path).toMatch(/^\/api\/v1\/(auth\/(login|refresh|sso\/)|audit\/keys$)/);
      else if (op.permission === 'authenticated') expect(op.path).toMatch(/^\/api\/v1\/auth\//);
      else expect(allPermissions).toContain(op.permission);
    }
    const docs = await httpClient(stack.gatewayUrl)('GET', '/docs');
    expect(docs.status).toBe(200);
    expect(String(docs.body)).toContain('swagger-ui');
    const metrics = await httpClient(stack.gatewayUrl)('GET', '/metrics');
    expect(String(metrics.body)).toContain('keel_http_request_duration_seconds');
  });
});
