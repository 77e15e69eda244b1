import { ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { Client } from 'pg';
import { parseConfig } from '@keel/config';
import { connectMessaging, Messaging, RpcClient } from '@keel/messaging';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, serviceEnv, Stack, waitForReady } from '@keel/testing';

type Http = ReturnType<typeof httpClient>;
const PASSWORD = 'correct horse battery staple';
const ZONE = 'Europe/Berlin';
const meta = { actor: { kind: 'system' as const, id: 'invoice-test' }, correlationId: 'invoice-test' };

interface Line {
  kind: string;
  amount: string;
  quantity: string;
}

/** Today in a zone as [year, month, day]. */
const localDate = (zone: string, t = Date.now()) => new Intl.DateTimeFormat('en-CA', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(t).split('-').map(Number) as [number, number, number];
const daysIn = (y: number, m: number) => new Date(Date.UTC(y, m, 0)).getUTCDate();
const round2 = (x: number) => (Math.round(x * 100 + 1e-9) / 100).toFixed(2);
const amounts = (lines: Line[]) => Object.fromEntries(lines.map((l) => [l.kind, l.amount]));

/**
 * Seats and invoices end to end (issue 8): real billing processes (two), audit, auth, tenant and
 * gateway, Postgres, NATS and Redis. A closed month becomes one draft whatever closes it how often
 * (concurrently on two processes too); the draft counts late usage; finalizing numbers it from a
 * gapless sequence and fixes it; a void issues a credit note and the period may be invoiced again.
 * Seats are the tenant's active users, prorated by the days they were active.
 */
describe('billing: seats, plans and invoices', () => {
  const env = isolatedEnv('invoices');
  const stack = new Stack(env, { KEEL_INVOICE_GRACE_SECONDS: '3600', KEEL_INVOICE_CLOSE_INTERVAL_MS: '500' });
  let operator: Http;
  let admin: Http;
  let manager: Http;
  let m: Messaging;
  let rpc: RpcClient;
  let db: Client;
  let second: ChildProcess | undefined;
  let tenantId: string;
  // The month before this one in Berlin, and an instant an hour before this month began there.
  const [y, mo, day] = localDate(ZONE);
  const previous = mo === 1 ? `${y - 1}-12` : `${y}-${String(mo - 1).padStart(2, '0')}`;
  const current = `${y}-${String(mo).padStart(2, '0')}`;
  let lateInPrevious: string;

  const use = async (id: string, tokens: string, occurredAt = new Date().toISOString()) => {
    const res = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id, occurredAt, model: 'inv-model', quantities: { inputTokens: tokens } }] } });
    expect(res.status).toBe(202);
    expect(res.body.accepted).toBe(1);
    await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/${id}?consistentWith=${res.body.results[0].position}`);
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'billing', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    m = await connectMessaging(parseConfig(env), 'invoice-test');
    rpc = new RpcClient(m);
    db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    const port = await freePort();
    second = spawn(process.execPath, [join(__dirname, '..', 'services', 'billing', 'dist', 'main.js')], {
      env: { ...serviceEnv('billing', { ...process.env, ...env, KEEL_INVOICE_GRACE_SECONDS: '3600', KEEL_INVOICE_CLOSE_INTERVAL_MS: '500' }), KEEL_OPS_PORT: String(port) },
      stdio: 'ignore',
    });
    await waitForReady(`http://127.0.0.1:${port}/ready`, 60_000, second);

    const price = await operator('POST', '/api/v1/billing/prices', { body: { model: 'inv-model', rates: { inputPerMTok: '1' }, effectiveFrom: '2026-01-01T00:00:00Z' } });
    expect(price.status).toBe(201);
    // 100 USD a month, 30 a seat, 1 USD of usage included, usage capped at 5 USD, at least 150 USD a month.
    const plan = await operator('POST', '/api/v1/billing/plan-prices', {
      body: { plan: 'professional', seat: '30', fixedFee: '100', includedUsage: '1', usageCap: '5', minimum: '150', effectiveFrom: '2026-01-01T00:00:00Z' },
    });
    expect(plan.status).toBe(201);
    expect(plan.body).toMatchObject({ scope: 'platform', plan: 'professional', version: 1, seat: '30', usageCap: '5', minimum: '150' });
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'invoiced', name: 'Invoiced', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    const zoned = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { timeZone: ZONE } });
    expect(zoned.status).toBe(200);
    for (const [email, role] of [['admin@invoiced.test', 'tenant_admin'], ['money@invoiced.test', 'billing_manager'], ['v1@invoiced.test', 'viewer'], ['v2@invoiced.test', 'viewer']]) {
      expect((await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: role, password: PASSWORD, roles: [role] } })).status).toBe(201);
    }
    const signIn = async (email: string) => httpClient(stack.gatewayUrl, (await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'invoiced', email, password: PASSWORD } })).body.accessToken);
    admin = await signIn('admin@invoiced.test');
    manager = await signIn('money@invoiced.test');
    const users = (await operator('GET', `/api/v1/tenants/${tenantId}/users`)).body.items as { id: string; email: string }[];
    const v2 = users.find((u) => u.email === 'v2@invoiced.test')!;
    expect((await operator('PATCH', `/api/v1/tenants/${tenantId}/users/${v2.id}/status`, { body: { status: 'disabled' } })).status).toBe(200);
    const monthStart = Date.UTC(y, mo - 1, 1) - 2 * 3_600_000; // local midnight in Berlin is 23:00 or 22:00 UTC the day before
    lateInPrevious = new Date(monthStart - 3_600_000).toISOString();
  });

  afterAll(async () => {
    second?.kill('SIGTERM');
    await m?.nc.close();
    await db?.end();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('refuses a bad time zone and a bad plan price, naming them', async () => {
    const zone = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { timeZone: 'Mars/Olympus' } });
    expect(zone.status).toBe(400);
    expect(zone.body.errors.map((e: { field: string }) => e.field)).toEqual(['timeZone']);
    const price = await operator('POST', '/api/v1/billing/plan-prices', { body: { plan: 'gold', seat: '-1', effectiveFrom: 'soon' } });
    expect(price.status).toBe(400);
    expect(price.body.errors.map((e: { field: string }) => e.field).sort()).toEqual(['effectiveFrom', 'plan', 'seat']);
    expect((await admin('POST', '/api/v1/billing/plan-prices', { body: { plan: 'starter', effectiveFrom: '2026-01-01T00:00:00Z' } })).status).toBe(403);
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: previous } })).status).toBe(403);
    const future = await operator('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: current } });
    expect(future.status).toBe(409);
    expect(future.body.detail).toMatch(/has not ended in Europe\/Berlin/);
    expect((await operator('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: '2026-13' } })).status).toBe(400);
    // Long before the tenant existed: nothing to invoice (and no number used up).
    const early = await operator('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: '2020-01' } });
    expect(early.status).toBe(400);
    expect(early.body.errors.map((e: { field: string }) => e.field)).toEqual(['period']);
  });

  it('counts seats as active users, prorated by the days they were active, in the upcoming invoice', async () => {
    const seats = await eventually(() => manager('GET', `/api/v1/tenants/${tenantId}/seats`).then((r) => r.body), (s) => s.used === 3, { timeoutMs: 20_000, what: 'three active seats' });
    // Four users were active today (one of them disabled since); December has 31 days, and so on.
    expect(seats).toMatchObject({ allowed: 250, used: 3, seatDays: 4, daysInPeriod: daysIn(y, mo) });
    await use('dec-1', '9000000');
    const up = (await manager('GET', `/api/v1/tenants/${tenantId}/invoices/upcoming`)).body;
    const days = daysIn(y, mo);
    const existed = days - day + 1;
    const fee = round2((100 * existed) / days);
    const seat = round2((30 * 4) / days);
    const sub = Number(fee) + Number(seat) + 9 - 1 - 3;
    const minimum = round2((150 * existed) / days);
    expect(up).toMatchObject({ id: null, period: current, timeZone: ZONE, status: 'draft', plan: 'professional', planPrice: { scope: 'platform', version: 1 } });
    const expected: Record<string, string> = { fixed_fee: fee, seats: seat, usage: '9.00', included_usage: '-1.00', usage_cap: '-3.00' };
    if (sub < Number(minimum)) expected.minimum = round2(Number(minimum) - sub);
    expect(amounts(up.lines)).toEqual(expected);
    expect(up.total).toBe(round2(Object.values(expected).reduce((s, a) => s + Number(a), 0)));
    const csv = await manager('GET', `/api/v1/tenants/${tenantId}/invoices/upcoming?format=csv`);
    expect(csv.headers.get('content-type')).toMatch(/text\/csv/);
    expect(csv.body.trim().split('\n').at(-1)).toBe(`,${current},draft,total,,,,,${up.total},USD`);
  });

  it('makes one invoice of a closed month whoever closes it how often, numbers it without gaps, and voids it with a credit note', async () => {
    await use('nov-1', '3000000', lateInPrevious);
    // Eight closes at once, answered by two billing processes: one draft.
    const closes = await Promise.all(
      Array.from({ length: 8 }, () => rpc.request<{ invoice: { id: string; status: string }; created: boolean }>('cmd.billing.close_period', { meta, payload: { tenantId, data: { period: previous } } })),
    );
    expect(new Set(closes.map((c) => c.invoice.id)).size).toBe(1);
    expect(closes.filter((c) => c.created)).toHaveLength(1);
    const again = await operator('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: previous } });
    expect(again.status).toBe(201);
    expect(again.body).toMatchObject({ created: false, invoice: { id: closes[0]!.invoice.id, status: 'draft', number: null, period: previous, timeZone: ZONE } });
    // The ledger holds one draft (read once it holds the close's position).
    const drafted = async () => (await db.query(`SELECT count(*)::int AS n, coalesce(max(seq), 0)::bigint AS last FROM audit.ledger WHERE tenant_id = $1`, [tenantId])).rows[0];
    await eventually(drafted, (d) => Number(d.last) >= again.body.position, { timeoutMs: 20_000, what: 'the ledger at the close' });
    expect((await db.query(`SELECT count(*)::int AS n FROM audit.ledger WHERE type = 'billing.invoice_book.invoice_drafted' AND tenant_id = $1`, [tenantId])).rows[0].n).toBe(1);
    const id = closes[0]!.invoice.id;
    // The tenant did not exist in that month: no fee, no seats, no minimum; its usage less the included part.
    expect(amounts(again.body.invoice.lines)).toEqual({ fixed_fee: '0.00', seats: '0.00', usage: '3.00', included_usage: '-1.00' });
    expect(again.body.invoice.total).toBe('2.00');

    // Late usage for the month counts while it is a draft.
    await use('nov-late', '1000000', lateInPrevious);
    expect((await manager('GET', `/api/v1/tenants/${tenantId}/invoices/${id}`)).body.total).toBe('3.00');
    expect((await operator('POST', `/api/v1/tenants/${tenantId}/invoices/${id}/void`, { body: { reason: 'x' } })).status).toBe(409);

    const fin = await operator('POST', `/api/v1/tenants/${tenantId}/invoices/${id}/finalize`);
    expect(fin.status).toBe(200);
    expect(fin.body.invoice).toMatchObject({ status: 'finalized', number: 'INV-000001', total: '3.00', finalizesAt: null });
    // Finalized is final: once more changes nothing, later usage does not move it.
    expect((await operator('POST', `/api/v1/tenants/${tenantId}/invoices/${id}/finalize`)).body.invoice.number).toBe('INV-000001');
    await use('nov-later', '1000000', lateInPrevious);
    const fixed = (await manager('GET', `/api/v1/tenants/${tenantId}/invoices/${id}`)).body;
    expect(fixed).toMatchObject({ status: 'finalized', total: '3.00' });
    const csv = await manager('GET', `/api/v1/tenants/${tenantId}/invoices/${id}?format=csv`);
    expect(csv.body.trim().split('\n')).toEqual([
      'invoice,period,status,kind,description,model,quantity,unitAmount,amount,currency',
      ...fixed.lines.map((l: { kind: string; description: string; model?: string; quantity: string; unitAmount: string; amount: string }) =>
        ['INV-000001', previous, 'finalized', l.kind, l.description, l.model ?? '', l.quantity, l.unitAmount, l.amount, 'USD'].map((v) => (/[",]/.test(v) ? `"${v}"` : v)).join(',')),
      `INV-000001,${previous},finalized,total,,,,,3.00,USD`,
    ]);

    // Voided (by the platform, with a reason): a credit note for its total; the month may be invoiced again.
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/invoices/${id}/void`, { body: { reason: 'wrong' } })).status).toBe(403);
    const voided = await operator('POST', `/api/v1/tenants/${tenantId}/invoices/${id}/void`, { body: { reason: 'usage reported late' } });
    expect(voided.status).toBe(200);
    expect(voided.body.invoice).toMatchObject({ status: 'void', voidReason: 'usage reported late', creditNote: { number: 'CN-000001', amount: '3.00' } });
    const corrected = await operator('POST', `/api/v1/tenants/${tenantId}/invoices`, { body: { period: previous } });
    expect(corrected.body).toMatchObject({ created: true, invoice: { status: 'draft', total: '4.00' } });
    expect(corrected.body.invoice.id).not.toBe(id);
    const second = await operator('POST', `/api/v1/tenants/${tenantId}/invoices/${corrected.body.invoice.id}/finalize`);
    expect(second.body.invoice).toMatchObject({ number: 'INV-000002', total: '4.00' });

    const list = (await manager('GET', `/api/v1/tenants/${tenantId}/invoices`)).body.items as { number: string; status: string }[];
    expect(list.map((i) => [i.number, i.status])).toEqual([['INV-000002', 'finalized'], ['INV-000001', 'void']]);
    // A rebuild from the ledger keeps exactly this.
    const snapshot = async () => (await db.query(`SELECT id, status, number, total, lines, credit_note FROM billing.invoices ORDER BY id`)).rows;
    const live = await snapshot();
    expect((await operator('POST', '/api/v1/admin/projections/billing.invoices/rebuild')).status).toBe(200);
    expect(await snapshot()).toEqual(live);
    expect((await db.query(`SELECT consumer, reason FROM billing.dead_letters`)).rows).toEqual([]);
  });
});
