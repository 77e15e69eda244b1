import { createServer, IncomingHttpHeaders, Server } from 'node:http';
import { AddressInfo } from 'node:net';
import { Client } from 'pg';
import { Webhook } from 'standardwebhooks';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, Stack } from '@keel/testing';

type Http = ReturnType<typeof httpClient>;
const PASSWORD = 'correct horse battery staple';

interface Received {
  path: string;
  /** When it arrived (ms). */
  at: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/**
 * Webhooks end to end (issue 8): real billing, audit, auth, tenant and gateway processes, Postgres,
 * NATS and Redis, and a real HTTP receiver started here. Deliveries are signed per Standard
 * Webhooks (checked with its reference library), retried with back-off until answered, never sent
 * again once answered (a redelivery asked for keeps the id), kept across a billing crash, and a
 * receiver that stays down disables its subscription. Personal data stays sealed unless the
 * subscription may read it.
 */
describe('webhooks: signed deliveries through an outbox', () => {
  const env = isolatedEnv('webhooks');
  // Fast retries (200 ms, then 600 ms…), 4 attempts a delivery, disabled after 3 failures in a row.
  const stack = new Stack(env, {
    KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK: 'true',
    KEEL_WEBHOOK_RETRY_BASE_MS: '200',
    KEEL_WEBHOOK_MAX_ATTEMPTS: '4',
    KEEL_WEBHOOK_DISABLE_AFTER: '3',
  });
  let operator: Http;
  let admin: Http;
  let manager: Http;
  let viewer: Http;
  let db: Client;
  let tenantId: string;
  let receiver: Server;
  let base: string;
  const received: Received[] = [];
  /** How many more requests each path refuses with a 500. */
  const failures = new Map<string, number>();
  const at = (path: string) => received.filter((r) => r.path === path);

  const signIn = async (email: string) => {
    const res = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'hooked', email, password: PASSWORD } });
    expect(res.status).toBe(200);
    return httpClient(stack.gatewayUrl, res.body.accessToken);
  };
  const subscribe = async (path: string, eventTypes: string[], extra: Record<string, unknown> = {}, who: Http = admin) => {
    const res = await who('POST', `/api/v1/tenants/${tenantId}/webhooks`, { body: { url: path.startsWith('http') ? path : `${base}${path}`, eventTypes, ...extra } });
    expect(res.status).toBe(201);
    return res.body as { webhook: { id: string }; secret: string; position: number };
  };
  const deliveries = async (webhookId: string) => (await admin('GET', `/api/v1/tenants/${tenantId}/webhooks/${webhookId}/deliveries`)).body.items as {
    id: string; status: string; attempts: number; lastStatus: number | null; eventType: string; lastError: string | null;
  }[];

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const path = req.url ?? '/';
        received.push({ path, at: Date.now(), headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
        const left = failures.get(path) ?? 0;
        if (left > 0) failures.set(path, left - 1);
        res.writeHead(left > 0 ? 500 : 204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    await stack.start('audit', 'auth', 'tenant', 'billing', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'hooked', name: 'Hooked', plan: 'enterprise' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    await operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${created.body.position}`);
    for (const [email, role] of [['admin@hooked.test', 'tenant_admin'], ['money@hooked.test', 'billing_manager'], ['viewer@hooked.test', 'viewer']]) {
      expect((await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: role, password: PASSWORD, roles: [role] } })).status).toBe(201);
    }
    admin = await signIn('admin@hooked.test');
    manager = await signIn('money@hooked.test');
    viewer = await signIn('viewer@hooked.test');
    const price = await operator('POST', '/api/v1/billing/prices', { body: { model: 'hook-model', rates: { inputPerMTok: '1' }, effectiveFrom: '2026-01-01T00:00:00Z' } });
    expect(price.status).toBe(201);
    await operator('GET', `/api/v1/billing/prices?consistentWith=${price.body.position}`);
  });

  afterAll(async () => {
    await db?.end();
    await stack.stop();
    await new Promise((resolve) => receiver?.close(resolve));
    await cleanupEnv(env);
  });

  it('refuses what it cannot deliver safely, naming it, and only those who may subscribe do', async () => {
    const bad = async (body: Record<string, unknown>, field: string, who: Http = admin, status = 400) => {
      const res = await who('POST', `/api/v1/tenants/${tenantId}/webhooks`, { body: { url: 'https://hooks.example.com/keel', eventTypes: ['billing.*'], ...body } });
      expect(res.status).toBe(status);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
      if (status === 400) expect(res.body.errors.map((e: { field: string }) => e.field)).toContain(field);
      return res;
    };
    await bad({ url: 'ftp://hooks.example.com/x' }, 'url');
    await bad({ url: 'https://10.0.0.7/hook' }, 'url');
    await bad({ url: 'https://user:pw@hooks.example.com/hook' }, 'url');
    await bad({ url: 'not a url' }, 'url');
    await bad({ eventTypes: [] }, 'eventTypes');
    await bad({ eventTypes: ['Billing Alerts'] }, 'eventTypes.0');
    await bad({ eventTypes: ['billing.budget_alert.threshold_crossed.*'] }, 'eventTypes.0');
    // Keel makes the secret; one sent is refused, by name.
    const own = await bad({ secret: 'mine' }, '(whole)');
    expect(JSON.stringify(own.body.errors)).toMatch(/secret/);
    await bad({}, '', viewer, 403);
    // Personal data opened needs the right to read it: a billing manager does not hold it.
    const sealedOnly = await bad({ includePersonalData: true }, '', manager, 403);
    expect(sealedOnly.body.detail).toMatch(/users:export-personal-data/);
    // A subscription reads no more than its maker: a billing manager gets billing's events, not the audit trail's.
    expect((await bad({ eventTypes: ['*'] }, '', manager, 403)).body.detail).toMatch(/audit:read/);
    await bad({ eventTypes: ['auth.user.*'] }, '', manager, 403);
    expect((await admin('GET', `/api/v1/tenants/${tenantId}/webhooks`)).body.items).toEqual([]);
  });

  it('delivers a budget alert signed, retries a failing receiver with back-off, and never again once it answered', async () => {
    failures.set('/flaky', 2);
    const hook = await subscribe('/flaky', ['billing.budget_alert.threshold_crossed'], {}, manager);
    expect(hook.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const budget = await manager('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'Hooked team', scope: { kind: 'team', id: 'hooks' }, unit: 'USD', limit: '1', period: { unit: 'month' }, thresholds: [{ percent: 50, mode: 'warn' }] },
    });
    expect(budget.status).toBe(201);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${budget.body.position}`);
    const used = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, {
      body: { records: [{ id: 'hook-1', occurredAt: new Date().toISOString(), model: 'hook-model', attribution: { teamId: 'hooks' }, quantities: { inputTokens: '600000' } }] },
    });
    expect(used.status).toBe(202);

    const [done] = await eventually(() => deliveries(hook.webhook.id), (d) => d.length === 1 && d[0]!.status === 'succeeded', { timeoutMs: 30_000, what: 'the alert delivered' });
    expect(done).toMatchObject({ eventType: 'billing.budget_alert.threshold_crossed', attempts: 3, lastStatus: 204 });
    const got = at('/flaky');
    expect(got).toHaveLength(3);
    // Every attempt is the same message (one webhook-id), signed under the subscription's secret.
    expect(new Set(got.map((r) => r.headers['webhook-id']))).toEqual(new Set([done!.id]));
    const wh = new Webhook(hook.secret);
    for (const r of got) {
      const payload = wh.verify(r.body, r.headers as Record<string, string>) as { type: string; data: { tenantId: string; data: { percent: number; budgetId: string } } };
      expect(payload).toMatchObject({ type: 'billing.budget_alert.threshold_crossed', data: { tenantId, data: { percent: 50, budgetId: budget.body.budget.id } } });
    }
    // A tampered body or another secret does not verify.
    expect(() => wh.verify(got[2]!.body.replace('"percent":50', '"percent":5'), got[2]!.headers as Record<string, string>)).toThrow();
    expect(() => new Webhook(`whsec_${Buffer.alloc(32, 1).toString('base64')}`).verify(got[2]!.body, got[2]!.headers as Record<string, string>)).toThrow();
    // Back-off: at least 200 ms (−10 %) before the first retry, three times that before the second.
    expect(got[1]!.at - got[0]!.at).toBeGreaterThanOrEqual(180);
    expect(got[2]!.at - got[1]!.at).toBeGreaterThanOrEqual(540);

    // Another event for it arrives after the first was answered: the answered one is not sent again.
    const second = await manager('PATCH', `/api/v1/tenants/${tenantId}/budgets/${budget.body.budget.id}`, { body: { thresholds: [{ percent: 50, mode: 'warn' }, { percent: 60, mode: 'warn' }] } });
    expect(second.status).toBe(200);
    const used2 = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, {
      body: { records: [{ id: 'hook-2', occurredAt: new Date().toISOString(), model: 'hook-model', attribution: { teamId: 'hooks' }, quantities: { inputTokens: '100000' } }] },
    });
    expect(used2.status).toBe(202);
    const both = await eventually(() => deliveries(hook.webhook.id), (d) => d.length === 2 && d.every((x) => x.status === 'succeeded'), { timeoutMs: 30_000, what: 'the 60 % alert delivered' });
    expect(at('/flaky')).toHaveLength(4);
    expect(at('/flaky').filter((r) => r.headers['webhook-id'] === done!.id)).toHaveLength(3);

    // Redelivery on request: the same id again, once.
    const again = await manager('POST', `/api/v1/tenants/${tenantId}/webhooks/${hook.webhook.id}/deliveries/${done!.id}/redeliver`);
    expect(again.status).toBe(202);
    await eventually(() => deliveries(hook.webhook.id), (d) => d.find((x) => x.id === done!.id)?.attempts === 4, { timeoutMs: 30_000, what: 'the redelivery' });
    expect(at('/flaky').filter((r) => r.headers['webhook-id'] === done!.id)).toHaveLength(4);
    expect(both.map((d) => d.id)).toContain(done!.id);
    const missing = await manager('POST', `/api/v1/tenants/${tenantId}/webhooks/${hook.webhook.id}/deliveries/msg_nothing/redeliver`);
    expect(missing.status).toBe(404);

    // A rebuild from the ledger agrees with the live deliveries and sends nothing again.
    const snapshot = async () => (await db.query(`SELECT id, status, attempts, last_status FROM billing.webhook_deliveries ORDER BY id`)).rows;
    const live = await snapshot();
    expect((await operator('POST', '/api/v1/admin/projections/billing.webhooks/rebuild')).status).toBe(200);
    expect(await snapshot()).toEqual(live);
  });

  it('disables a subscription whose receiver stays down, and resumes it when re-enabled', async () => {
    const closed = await freePort();
    const hook = await subscribe(`http://127.0.0.1:${closed}/gone`, ['billing.budget.*']);
    const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'Down', scope: { kind: 'project', id: 'down' }, unit: 'tokens', limit: '1000', period: { unit: 'day' } },
    });
    expect(made.status).toBe(201);
    const view = () => admin('GET', `/api/v1/tenants/${tenantId}/webhooks/${hook.webhook.id}`).then((r) => r.body);
    const disabled = await eventually(view, (w) => w.status === 'disabled', { timeoutMs: 30_000, what: 'the subscription disabled' });
    expect(disabled.consecutiveFailures).toBe(3);
    expect(disabled.disabledReason).toMatch(/3 delivery attempts in a row failed/);
    const [pending] = await deliveries(hook.webhook.id);
    expect(pending).toMatchObject({ status: 'pending', attempts: 3, eventType: 'billing.budget.created', lastStatus: null });
    expect(pending!.lastError).toMatch(/could not be reached/);

    // The receiver is back (on the same address): re-enabled, the waiting delivery goes out.
    const back = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        received.push({ path: '/gone', at: Date.now(), headers: req.headers, body: '' });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => back.listen(closed, '127.0.0.1', resolve));
    try {
      const enabled = await admin('PATCH', `/api/v1/tenants/${tenantId}/webhooks/${hook.webhook.id}`, { body: { enabled: true } });
      expect(enabled.status).toBe(200);
      expect(enabled.body.webhook).toMatchObject({ status: 'active', consecutiveFailures: 0 });
      await eventually(() => deliveries(hook.webhook.id), (d) => d[0]?.status === 'succeeded', { timeoutMs: 30_000, what: 'the waiting delivery sent' });
      expect(at('/gone')).toHaveLength(1);
    } finally {
      await new Promise((resolve) => back.close(resolve));
    }
  });

  it('keeps personal data sealed unless the subscription may read it, and loses nothing across a billing crash', async () => {
    const open = await subscribe('/people-open', ['auth.user.*'], { includePersonalData: true });
    const sealed = await subscribe('/people-sealed', ['auth.user.*']);
    await admin('GET', `/api/v1/tenants/${tenantId}/webhooks?consistentWith=${sealed.position}`);
    // Where personal data goes opened, only who may read it changes where: a billing manager may not.
    const redirect = await manager('PATCH', `/api/v1/tenants/${tenantId}/webhooks/${open.webhook.id}`, { body: { url: 'https://elsewhere.example.com/x' } });
    expect(redirect.status).toBe(403);
    expect((await manager('PATCH', `/api/v1/tenants/${tenantId}/webhooks/${open.webhook.id}`, { body: { description: 'people' } })).status).toBe(200);
    // Nor a subscription to what the manager may not read (auth's events), though it delivers no personal data.
    const elsewhere = await manager('PATCH', `/api/v1/tenants/${tenantId}/webhooks/${sealed.webhook.id}`, { body: { url: 'https://elsewhere.example.com/x' } });
    expect(elsewhere.status).toBe(403);
    expect(elsewhere.body.detail).toMatch(/audit:read/);
    // Billing is down while the user is made: the event waits in the log, the delivery is made when it is back.
    await stack.kill('billing');
    const user = await admin('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email: 'ada@hooked.test', name: 'Ada Lovelace', password: PASSWORD, roles: ['viewer'] } });
    expect(user.status).toBe(201);
    await stack.startOne('billing');
    await eventually(async () => at('/people-open').length + at('/people-sealed').length, (n) => n === 2, { timeoutMs: 30_000, what: 'both deliveries' });
    const plain = new Webhook(open.secret).verify(at('/people-open')[0]!.body, at('/people-open')[0]!.headers as Record<string, string>) as { type: string; data: { data: { email: string; name: string } } };
    expect(plain).toMatchObject({ type: 'auth.user.created', data: { data: { email: 'ada@hooked.test', name: 'Ada Lovelace' } } });
    const kept = new Webhook(sealed.secret).verify(at('/people-sealed')[0]!.body, at('/people-sealed')[0]!.headers as Record<string, string>) as { data: { data: { email: string; name: string } } };
    expect(kept.data.data.email).not.toContain('ada');
    expect(kept.data.data.email).toMatch(/^enc:/);
    expect(kept.data.data.name).not.toContain('Ada');
    await eventually(() => deliveries(open.webhook.id), (d) => d.length === 1 && d[0]!.status === 'succeeded', { timeoutMs: 30_000, what: 'the delivery recorded' });

    // A rotated secret: deliveries carry the new signature and, for a day, the old one too.
    const rotated = await admin('POST', `/api/v1/tenants/${tenantId}/webhooks/${sealed.webhook.id}/rotate-secret`);
    expect(rotated.status).toBe(200);
    expect(rotated.body.secret).not.toBe(sealed.secret);
    await admin('GET', `/api/v1/tenants/${tenantId}/webhooks?consistentWith=${rotated.body.position}`);
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email: 'grace@hooked.test', name: 'Grace Hopper', password: PASSWORD, roles: ['viewer'] } })).status).toBe(201);
    await eventually(async () => at('/people-sealed').length, (n) => n === 2, { timeoutMs: 30_000, what: 'the delivery after the rotation' });
    const last = at('/people-sealed')[1]!;
    expect(String(last.headers['webhook-signature']).split(' ')).toHaveLength(2);
    expect(new Webhook(rotated.body.secret).verify(last.body, last.headers as Record<string, string>)).toBeTruthy();
    expect(new Webhook(sealed.secret).verify(last.body, last.headers as Record<string, string>)).toBeTruthy();

    // Deleted: nothing more is delivered to it (the next user's event reaches only the open one).
    const deleted = await admin('DELETE', `/api/v1/tenants/${tenantId}/webhooks/${sealed.webhook.id}`);
    expect(deleted.status).toBe(200);
    const gone = await admin('GET', `/api/v1/tenants/${tenantId}/webhooks/${sealed.webhook.id}?consistentWith=${deleted.body.position}`);
    expect(gone.status).toBe(404);
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email: 'alan@hooked.test', name: 'Alan Turing', password: PASSWORD, roles: ['viewer'] } })).status).toBe(201);
    await eventually(async () => at('/people-open').length, (n) => n === 3, { timeoutMs: 30_000, what: 'the third user delivered' });
    expect(at('/people-sealed')).toHaveLength(2);
    // The ledger holds every attempt as an event: one per request received, and the three the closed port refused.
    const attempts = async () => (await db.query(`SELECT count(*)::int AS n FROM audit.ledger WHERE type = 'billing.webhook_delivery.attempted' AND tenant_id = $1`, [tenantId])).rows[0].n as number;
    await eventually(attempts, (n) => n >= received.length + 3, { timeoutMs: 20_000, what: 'every attempt in the ledger' });
    expect(await attempts()).toBe(received.length + 3);
    // And no billing read model refused any of these events.
    expect((await db.query(`SELECT consumer, reason FROM billing.dead_letters`)).rows).toEqual([]);
  });
});
