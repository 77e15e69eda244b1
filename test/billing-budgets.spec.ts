import { ChildProcess, spawn } from 'node:child_process';
import { Client } from 'pg';
import { join } from 'node:path';
import { parseConfig } from '@keel/config';
import { KeelError } from '@keel/contracts';
import { connectMessaging, Messaging, RpcClient } from '@keel/messaging';
import { cleanupEnv, eventually, freePort, httpClient, isolatedEnv, Redis, serviceEnv, Stack, waitForReady } from '@keel/testing';

type Http = ReturnType<typeof httpClient>;
const PASSWORD = 'correct horse battery staple';
const meta = { actor: { kind: 'system' as const, id: 'budget-test' }, correlationId: 'budget-test' };

/**
 * Budgets and the hot path end to end (issue 8, second part): real billing processes (two of
 * them), audit, auth, tenant and gateway, Postgres, NATS and Redis. Reservations are atomic across
 * every applicable budget and across processes; settling counts what was used once; what is never
 * settled expires and frees its room; Redis losing the counters loses no spend.
 */
describe('billing: budgets and reservations', () => {
  const env = isolatedEnv('budgets');
  // Forecasts every half second (the second process keeps the default: one evaluator is enough).
  const stack = new Stack(env, { KEEL_FORECAST_INTERVAL_MS: '500', KEEL_BUDGET_DRIFT_INTERVAL_MS: '300' });
  let operator: Http;
  let admin: Http;
  let developer: Http;
  let m: Messaging;
  let rpc: RpcClient;
  let redis: Redis;
  let second: ChildProcess | undefined;
  let tenantId: string;

  const signIn = async (email: string) => {
    const res = await httpClient(stack.gatewayUrl)('POST', '/api/v1/auth/login', { body: { tenant: 'budgeted', email, password: PASSWORD } });
    expect(res.status).toBe(200);
    return httpClient(stack.gatewayUrl, res.body.accessToken);
  };
  const reserve = (requestId: string, extra: Record<string, unknown> = {}) =>
    rpc
      .request<{ status: string; holds: { budgetId: string; amount: string }[] }>('cmd.billing.reserve', {
        meta,
        payload: { tenantId, data: { requestId, model: 'm-1', attribution: { teamId: 'alpha', userId: 'u1' }, estimate: { inputTokens: '1000' }, ...extra } },
      })
      .then(
        (r) => ({ ok: true as const, r }),
        (e: KeelError) => ({ ok: false as const, code: e.code, details: e.details }),
      );
  const settle = (requestId: string, data: Record<string, unknown>) =>
    rpc.request<{ status: string; position?: number }>('cmd.billing.settle', { meta, payload: { tenantId, requestId, data } });
  const budget = async (id: string) => (await admin('GET', `/api/v1/tenants/${tenantId}/budgets/${id}`)).body;

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'billing', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    m = await connectMessaging(parseConfig(env), 'budget-test');
    rpc = new RpcClient(m);
    redis = new Redis(env.REDIS_URL!);
    // A second billing process: reservations are answered by both (one queue group).
    const port = await freePort();
    second = spawn(process.execPath, [join(__dirname, '..', 'services', 'billing', 'dist', 'main.js')], {
      env: { ...serviceEnv('billing', { ...process.env, ...env }), KEEL_OPS_PORT: String(port) },
      stdio: 'ignore',
    });
    await waitForReady(`http://127.0.0.1:${port}/ready`, 60_000, second);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'budgeted', name: 'Budgeted', plan: 'enterprise' } });
    tenantId = created.body.tenant.id;
    await operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${created.body.position}`);
    for (const [email, role] of [['admin@budgeted.test', 'tenant_admin'], ['dev@budgeted.test', 'developer']]) {
      expect((await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email, name: role, password: PASSWORD, roles: [role] } })).status).toBe(201);
    }
    admin = await signIn('admin@budgeted.test');
    developer = await signIn('dev@budgeted.test');
    // 1 USD per million input tokens: a 1,000-token estimate holds 0.001 USD.
    const price = await operator('POST', '/api/v1/billing/prices', { body: { model: 'm-1', rates: { inputPerMTok: '1', outputPerMTok: '2' }, effectiveFrom: '2026-01-01T00:00:00Z' } });
    expect(price.status).toBe(201);
    await operator('GET', `/api/v1/billing/prices?consistentWith=${price.body.position}`);
  });

  afterAll(async () => {
    second?.kill('SIGTERM');
    await redis?.quit();
    await m?.nc.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('keeps budgets as events, with their rules checked, and only for those who may', async () => {
    const body = { name: 'Team alpha', scope: { kind: 'team', id: 'alpha' }, unit: 'USD', limit: '0.1', period: { unit: 'month', timeZone: 'Europe/Berlin' } };
    for (const [bad, field] of [
      [{ ...body, scope: { kind: 'team' } }, 'scope.id'],
      [{ ...body, thresholds: [{ percent: 90, mode: 'hard' }, { percent: 100, mode: 'hard' }] }, 'thresholds'],
      [{ ...body, limit: '0' }, 'limit'],
      [{ ...body, unit: 'tokens', limit: '10.5' }, 'limit'],
      [{ ...body, period: { unit: 'fortnight' } }, 'period.unit'],
    ] as const) {
      const res = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: bad });
      expect(res.status).toBe(400);
      expect(res.body.errors.map((e: { field: string }) => e.field)).toContain(field);
    }
    const zone = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: { ...body, period: { unit: 'month', timeZone: 'Mars/Olympus' } } });
    expect(zone.status).toBe(400);
    expect((await developer('POST', `/api/v1/tenants/${tenantId}/budgets`, { body })).status).toBe(403);
    expect((await developer('GET', `/api/v1/tenants/${tenantId}/budgets`)).status).toBe(403);

    const created = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body, headers: { 'idempotency-key': 'budget-alpha' } });
    expect(created.status).toBe(201);
    expect(created.body.budget).toMatchObject({ name: 'Team alpha', scope: { kind: 'team', id: 'alpha' }, limit: '0.1', thresholds: [{ percent: 80, mode: 'warn' }, { percent: 100, mode: 'hard' }], failMode: 'closed', version: 1 });
    const renamed = await admin('PATCH', `/api/v1/tenants/${tenantId}/budgets/${created.body.budget.id}`, { body: { name: 'Alpha' }, headers: { 'if-match': '"2"' } });
    expect(renamed.status).toBe(412);
    const ok = await admin('PATCH', `/api/v1/tenants/${tenantId}/budgets/${created.body.budget.id}`, { body: { name: 'Alpha' }, headers: { 'if-match': '"1"' } });
    expect(ok.status).toBe(200);
    const read = await admin('GET', `/api/v1/tenants/${tenantId}/budgets/${created.body.budget.id}?consistentWith=${ok.body.position}`);
    expect(read.body).toMatchObject({ name: 'Alpha', version: 2, current: { spent: '0', reserved: '0', remaining: '0.1' } });
    // A month in Berlin begins at local midnight.
    expect(new Date(read.body.current.periodStart).toLocaleString('sv-SE', { timeZone: 'Europe/Berlin' })).toMatch(/-01 00:00:00$/);
  });

  it('grants exactly the room there is to 500 concurrent reservations over two processes, and settles each once', async () => {
    const list = await admin('GET', `/api/v1/tenants/${tenantId}/budgets`);
    const alpha = list.body.items.find((b: { name: string }) => b.name === 'Alpha');
    // A second, looser budget on the user: every reservation holds both or neither.
    const user = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: { name: 'u1 tokens', scope: { kind: 'user', id: 'u1' }, unit: 'tokens', limit: '1000000', period: { unit: 'day' } } });
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${user.body.position}`);

    const answers = await Promise.all(Array.from({ length: 500 }, (_, i) => reserve(`call-${i}`)));
    const granted = answers.filter((a) => a.ok && a.r.status === 'reserved');
    const refused = answers.filter((a) => !a.ok);
    expect(granted).toHaveLength(100);
    expect(refused).toHaveLength(400);
    expect(refused.every((a) => !a.ok && a.code === 'budget_exceeded')).toBe(true);
    expect(refused[0]).toMatchObject({ details: { budget: { id: alpha.id, name: 'Alpha', unit: 'USD', limit: '0.1', requested: '0.001' } } });
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0', reserved: '0.1', remaining: '0' });
    expect((await budget(user.body.budget.id)).current).toMatchObject({ reserved: '100000' });

    // Over HTTP too: the refusal is a 402 problem naming the budget.
    const http = await admin('POST', `/api/v1/tenants/${tenantId}/usage/reservations`, {
      body: { requestId: 'http-1', model: 'm-1', attribution: { teamId: 'alpha' }, estimate: { inputTokens: '1000' } },
    });
    expect(http.status).toBe(402);
    expect(http.body).toMatchObject({ code: 'budget_exceeded', budget: { name: 'Alpha', limit: '0.1', spent: '0', reserved: '0.1' } });

    // Each call used half its estimate; settled twice, counted once.
    const ids = answers.map((a, i) => (a.ok && a.r.status === 'reserved' ? i : -1)).filter((i) => i >= 0);
    let last = 0;
    for (const i of ids) {
      const s = await settle(`call-${i}`, { quantities: { inputTokens: '500' } });
      expect(s.status).toBe('settled');
      last = Math.max(last, s.position ?? 0);
      expect((await settle(`call-${i}`, { quantities: { inputTokens: '999999' } })).status).toBe('settled');
    }
    const after = (await budget(alpha.id)).current;
    expect(after).toMatchObject({ spent: '0.05', reserved: '0', remaining: '0.05' });
    // The usage records are the settled calls, once each.
    const report = await admin('GET', `/api/v1/tenants/${tenantId}/usage/report?period=${new Date().toISOString().slice(0, 7)}&consistentWith=${last}`);
    expect(report.body.total).toMatchObject({ records: 100, inputTokens: '50000', cost: '0.05' });
    // The freed room is granted again, and no more.
    const more = await Promise.all(Array.from({ length: 80 }, (_, i) => reserve(`more-${i}`)));
    expect(more.filter((a) => a.ok && a.r.status === 'reserved')).toHaveLength(50);
    for (let i = 0; i < 80; i++) await rpc.request('cmd.billing.release', { meta, payload: { tenantId, requestId: `more-${i}` } }).catch(() => undefined);
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0.05', reserved: '0' });
  });

  it('releases a reservation never settled when it expires, and its room is usable again', async () => {
    const list = await admin('GET', `/api/v1/tenants/${tenantId}/budgets`);
    const alpha = list.body.items.find((b: { name: string }) => b.name === 'Alpha');
    const before = (await budget(alpha.id)).current;
    const r = await reserve('forgotten', { ttlSeconds: 5, estimate: { inputTokens: '50000' } });
    expect(r).toMatchObject({ ok: true, r: { status: 'reserved' } });
    expect((await reserve('no-room')).ok).toBe(false);
    await eventually(() => budget(alpha.id), (b) => b.current.reserved === before.reserved, { timeoutMs: 20_000, what: 'the sweeper to release the expired reservation' });
    expect(await reserve('room-again')).toMatchObject({ ok: true, r: { status: 'reserved' } });
    await rpc.request('cmd.billing.release', { meta, payload: { tenantId, requestId: 'room-again' } });
    // A settle after the expiry still records the call, and its spend counts (nothing is held any more).
    expect((await rpc.request<{ status: string }>('cmd.billing.settle', { meta, payload: { tenantId, requestId: 'forgotten', data: { quantities: { inputTokens: '1000' } } } })).status).toBe('settled');
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0.051', reserved: '0' });
  });

  it('rebuilds lost counters from the usage records: Redis forgets no spend and counts none twice', async () => {
    const list = await admin('GET', `/api/v1/tenants/${tenantId}/budgets`);
    const alpha = list.body.items.find((b: { name: string }) => b.name === 'Alpha');
    // Usage reported directly (not through a reservation) counts on the budget too.
    const direct = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, {
      body: { records: [{ id: 'direct-1', occurredAt: new Date().toISOString(), model: 'm-1', attribution: { teamId: 'alpha' }, quantities: { inputTokens: '10000' } }] },
    });
    expect(direct.status).toBe(202);
    await admin('GET', `/api/v1/tenants/${tenantId}/usage/report?period=${new Date().toISOString().slice(0, 7)}&consistentWith=${direct.body.results[0].position}`);
    await eventually(() => budget(alpha.id), (b) => b.current.spent === '0.061', { timeoutMs: 10_000, what: 'the direct usage on the counter' });

    const keys = await redis.keys(`${env.KEEL_REDIS_PREFIX}billing:budget:*`);
    expect(keys.length).toBeGreaterThan(0);
    await redis.del(...keys);
    // Read from Postgres while Redis has nothing, then seeded from it by the next reservation.
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0.061', reserved: '0' });
    expect(await reserve('after-flush')).toMatchObject({ ok: true, r: { status: 'reserved' } });
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0.061', reserved: '0.001' });
    // A call of another team and user: only the plan's quota holds it (every tenant has that budget).
    const free = await reserve('no-budget', { attribution: { teamId: 'gamma', userId: 'u9' } });
    expect(free).toMatchObject({ ok: true, r: { status: 'reserved', holds: [{ unit: 'tokens', amount: '1000' }] } });
    const freeSettled = await settle('no-budget', { quantities: { inputTokens: '10' } });
    expect(freeSettled.status).toBe('settled');
    expect(await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/no-budget?consistentWith=${freeSettled.position}`)).toMatchObject({ status: 200, body: { attribution: { teamId: 'gamma' } } });
    const vague = await admin('POST', `/api/v1/tenants/${tenantId}/usage/reservations/after-flush/settle`, { body: {} });
    expect(vague.status).toBe(400);
    expect(vague.body.errors.map((e: { field: string }) => e.field)).toEqual(['quantities']);
    expect((await admin('POST', `/api/v1/tenants/${tenantId}/usage/reservations/nothing-here/release`)).status).toBe(404);
    expect((await settle('after-flush', { cancelled: true })).status).toBe('settled');
    // Cancelled without quantities: charged its estimated input (1,000 tokens).
    expect((await budget(alpha.id)).current).toMatchObject({ spent: '0.062', reserved: '0' });
  });

  it("makes the plan's monthly token quota every tenant's hard budget, following the plan", async () => {
    const quotas = { maxUsers: 10, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 5_000, requestsPerMinute: 600 };
    const made = await operator('POST', '/api/v1/tenants', { body: { slug: 'quota-co', name: 'Quota', plan: 'custom', quotas } });
    expect(made.status).toBe(201);
    const quotaTenant = made.body.tenant.id as string;
    const plan = () => operator('GET', `/api/v1/tenants/${quotaTenant}/budgets`).then((r) => r.body.items.find((b: { name: string }) => b.name === 'Plan: monthly token quota'));
    const first = await eventually(plan, (b) => b?.limit === '5000', { timeoutMs: 20_000, what: "the plan's quota as a budget" });
    expect(first).toMatchObject({ scope: { kind: 'tenant' }, unit: 'tokens', period: { unit: 'month', timeZone: 'UTC' }, failMode: 'open', current: { spent: '0', remaining: '5000' } });
    const call = (requestId: string) =>
      rpc
        .request<{ status: string }>('cmd.billing.reserve', { meta, payload: { tenantId: quotaTenant, data: { requestId, model: 'm-1', estimate: { inputTokens: '3000' } } } })
        .then((r) => r.status, (e: KeelError) => e.code);
    expect(await call('q-1')).toBe('reserved');
    expect(await call('q-2')).toBe('budget_exceeded');
    // It changes with the plan, and only with the plan.
    expect((await operator('PATCH', `/api/v1/tenants/${quotaTenant}/budgets/${first.id}`, { body: { limit: '1' } })).status).toBe(409);
    expect((await operator('DELETE', `/api/v1/tenants/${quotaTenant}/budgets/${first.id}`)).status).toBe(409);
    const raised = await operator('PATCH', `/api/v1/tenants/${quotaTenant}/plan`, { body: { plan: 'custom', quotas: { ...quotas, monthlyTokenQuota: 10_000 } } });
    expect(raised.status).toBe(200);
    await eventually(plan, (b) => b?.limit === '10000', { timeoutMs: 20_000, what: 'the raised quota' });
    expect(await call('q-3')).toBe('reserved');
  });

  it('raises each threshold once per budget and period, across a restart and redelivery, and again in another period', async () => {
    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    const alerts = async () =>
      (await db.query(`SELECT envelope->'data' AS d FROM audit.ledger WHERE type = 'billing.budget_alert.threshold_crossed' AND tenant_id = $1 ORDER BY seq`, [tenantId])).rows.map(
        (r) => r.d as { percent: number; mode: string; periodStart: string; spent: string },
      );
    try {
      const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
        body: { name: 'Project p9', scope: { kind: 'project', id: 'p9' }, unit: 'USD', limit: '1', period: { unit: 'day' },
                thresholds: [{ percent: 50, mode: 'warn' }, { percent: 80, mode: 'soft' }, { percent: 120, mode: 'hard' }] },
      });
      expect(made.status).toBe(201);
      await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${made.body.position}`);
      const use = (id: string, tokens: string, occurredAt = new Date().toISOString()) =>
        admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id, occurredAt, model: 'm-1', attribution: { projectId: 'p9' }, quantities: { inputTokens: tokens } }] } });
      // One large record (0.9 USD) crosses 50 and 80 at once; 120 is not reached.
      expect((await use('p9-big', '900000')).status).toBe(202);
      await eventually(alerts, (a) => a.length === 2, { timeoutMs: 20_000, what: 'the two alerts on the log' });
      expect((await alerts()).map((a) => [a.percent, a.mode, a.spent])).toEqual([[50, 'warn', '0.9'], [80, 'soft', '0.9']]);

      // A billing restart (its consumer redelivers what it had not acked) and more usage below 120: nothing again.
      await stack.kill('billing');
      await stack.startOne('billing');
      const small = await use('p9-small', '100000');
      await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/p9-small?consistentWith=${small.body.results[0].position}`);
      expect(await alerts()).toHaveLength(2);
      // Past 120 % (1.3 USD): the hard threshold, once.
      await use('p9-more', '300000');
      await eventually(alerts, (a) => a.length === 3, { timeoutMs: 20_000, what: 'the third alert' });
      // Yesterday is another period: it has its own thresholds (re-armed).
      await use('p9-yesterday', '600000', new Date(Date.now() - 86_400_000).toISOString());
      const all = await eventually(alerts, (a) => a.length === 4, { timeoutMs: 20_000, what: 'the alert of the other period' });
      expect(all[3]).toMatchObject({ percent: 50 });
      expect(all[3]!.periodStart).not.toBe(all[0]!.periodStart);
      await eventually(async () => (await db.query(`SELECT count(*)::int AS n FROM billing.budget_alerts WHERE NOT published`)).rows[0].n, (n) => n === 0, { timeoutMs: 20_000, what: 'every alert seen on the log' });
      // The read model rebuilt from the ledger has the same alerts, all published (none is sent again).
      const snapshot = async () => (await db.query(`SELECT * FROM billing.budget_alerts ORDER BY budget_id, period_start, percent`)).rows;
      const live = await snapshot();
      expect((await operator('POST', '/api/v1/admin/projections/billing.usage/rebuild')).status).toBe(200);
      expect(await snapshot()).toEqual(live);
      expect(await alerts()).toHaveLength(4);
    } finally {
      await db.end();
    }
  });

  it('forecasts the month at its trailing run-rate, and raises projected_to_exceed once for a budget it will pass', async () => {
    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      // What this year's budgets see now: the period so far (the run-rate window: at most 7 days) and what remains.
      // (A year, not a month: its first hour, when nothing is raised yet, is one hour a year.)
      const now = Date.now();
      const yearStart = Date.UTC(new Date(now).getUTCFullYear(), 0, 1);
      const yearEnd = Date.UTC(new Date(now).getUTCFullYear() + 1, 0, 1);
      const windowDays = Math.max(1 / 1440, Math.min(7, (now - yearStart) / 86_400_000));
      const remainingDays = (yearEnd - now) / 86_400_000;
      // 1 USD spent now runs at 1/windowDays a day: one limit it reaches halfway to the month's end, one it never does.
      const soon = (1 + remainingDays / 2 / windowDays).toFixed(6);
      const never = (1 + (2 * remainingDays) / windowDays).toFixed(6);
      const made: Record<string, string> = {};
      for (const [name, limit] of [['soon', soon], ['never', never]] as const) {
        const res = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: { name: `Forecast ${name}`, scope: { kind: 'project', id: 'fc' }, unit: 'USD', limit, period: { unit: 'year' }, thresholds: [{ percent: 100, mode: 'warn' }] } });
        expect(res.status).toBe(201);
        made[name] = res.body.budget.id;
      }
      const used = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id: 'fc-1', occurredAt: new Date(now).toISOString(), model: 'm-1', attribution: { projectId: 'fc' }, quantities: { inputTokens: '1000000' } }] } });
      expect(used.status).toBe(202);
      await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/fc-1?consistentWith=${used.body.results[0].position}`);

      const forecast = await admin('GET', `/api/v1/tenants/${tenantId}/usage/forecast`);
      expect(forecast.status).toBe(200);
      expect(forecast.body).toMatchObject({ tenantId, timeZone: 'UTC', currency: 'USD' });
      const of = (id: string) => forecast.body.budgets.find((b: { budgetId: string }) => b.budgetId === id);
      expect(of(made.soon!)).toMatchObject({ spent: '1', exceeds: true });
      expect(of(made.never!)).toMatchObject({ spent: '1', exceeds: false, projectedToReachAt: null });
      // Reached about halfway through what remains (the rate is measured on whole minutes).
      const reach = Date.parse(of(made.soon!).projectedToReachAt);
      expect(Math.abs(reach - (now + (remainingDays / 2) * 86_400_000))).toBeLessThan(Math.max(1, windowDays) * 5 * 60_000);
      expect(Number(of(made.never!).projected)).toBeLessThan(Number(never));
      expect((await developer('GET', `/api/v1/tenants/${tenantId}/usage/forecast`)).status).toBe(403);
      expect((await admin('GET', `/api/v1/tenants/${tenantId}/usage/forecast?timeZone=Mars/Olympus`)).status).toBe(400);

      const raised = async () =>
        (await db.query(`SELECT envelope->'data' AS d FROM audit.ledger WHERE type = 'billing.budget_alert.projected_to_exceed' AND tenant_id = $1`, [tenantId])).rows.map((r) => r.d as { budgetId: string });
      await eventually(raised, (r) => r.some((x) => x.budgetId === made.soon), { timeoutMs: 20_000, what: 'projected_to_exceed on the log' });
      // Evaluated every half second by one process and every five minutes by the other, across a restart: still once.
      await stack.kill('billing');
      await stack.startOne('billing');
      // The restarted evaluator has run (and found the first budget raised) once a budget made now is raised too.
      const after = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: { name: 'Forecast after', scope: { kind: 'project', id: 'fc' }, unit: 'USD', limit: soon, period: { unit: 'year' }, thresholds: [{ percent: 100, mode: 'warn' }] } });
      expect(after.status).toBe(201);
      await eventually(raised, (r) => r.some((x) => x.budgetId === after.body.budget.id), { timeoutMs: 20_000, what: 'the new budget raised after the restart' });
      // Once each (the earlier tests' Alpha budget is projected past its limit too), never for the one it will not reach.
      const ids = (await raised()).map((r) => r.budgetId);
      expect(ids.filter((id) => id === made.soon || id === made.never)).toEqual([made.soon]);
      expect(new Set(ids).size).toBe(ids.length);
    } finally {
      await db.end();
    }
  });

  it("counts a team's sub-teams against its budget, following auth's team tree as it changes", async () => {
    const team = async (name: string, parentId: string | null = null) => {
      const r = await admin('POST', `/api/v1/tenants/${tenantId}/teams`, { body: { name, parentId } });
      expect(r.status).toBe(201);
      return r.body as { id: string; position: number };
    };
    const org = await team('Engineering');
    const platform = await team('Platform', org.id);
    const infra = await team('Infra', platform.id);
    const other = await team('Sales');
    const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'Engineering', scope: { kind: 'team', id: org.id }, unit: 'tokens', limit: '10000', period: { unit: 'month' }, thresholds: [{ percent: 100, mode: 'hard' }] },
    });
    expect(made.status).toBe(201);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${made.body.position}`);
    const holds = async (requestId: string, teamId: string) => {
      const r = await reserve(requestId, { attribution: { teamId }, estimate: { inputTokens: '100' } });
      if (!r.ok) throw new Error(`refused: ${r.code}`);
      return r.r.holds.map((h) => h.budgetId);
    };
    // The billing teams projection has the tree once it applied the last team (read here until then).
    await eventually(() => holds(`tree-${Date.now()}`, infra.id), (ids) => ids.includes(made.body.budget.id), { timeoutMs: 20_000, what: 'the grandchild team under the budget' });
    expect(await holds('tree-platform', platform.id)).toContain(made.body.budget.id);
    expect(await holds('tree-sales', other.id)).not.toContain(made.body.budget.id);
    // Usage reported for the grandchild is the budget's spend.
    const used = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id: 'tree-usage', occurredAt: new Date().toISOString(), model: 'm-1', attribution: { teamId: infra.id }, quantities: { inputTokens: '2500' } }] } });
    expect(used.status).toBe(202);
    await admin('GET', `/api/v1/tenants/${tenantId}/usage/records/tree-usage?consistentWith=${used.body.results[0].position}`);
    // (The counter gets it after the projection's commit.)
    await eventually(() => budget(made.body.budget.id), (b) => b.current.spent === '2500', { timeoutMs: 20_000, what: "the grandchild's usage on the budget" });
    // Moved out from under it: no longer counted.
    const moved = await admin('PATCH', `/api/v1/tenants/${tenantId}/teams/${platform.id}`, { body: { parentId: other.id } });
    expect(moved.status).toBe(200);
    await eventually(() => holds(`tree-moved-${Date.now()}`, infra.id), (ids) => !ids.includes(made.body.budget.id), { timeoutMs: 20_000, what: 'the moved team out of the budget' });
  });

  it('measures drift between a budget counter and the usage records in Postgres', async () => {
    const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, { body: { name: 'Drift', scope: { kind: 'project', id: 'drift' }, unit: 'tokens', limit: '100000', period: { unit: 'day' } } });
    expect(made.status).toBe(201);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${made.body.position}`);
    const r = await reserve('drift-1', { attribution: { projectId: 'drift' } });
    expect(r.ok).toBe(true);
    await settle('drift-1', { quantities: { inputTokens: '1000' } });
    // Each check compares every budget; a drifting one is listed by id (the earlier test's team
    // budget is, for good: its team moved, see the README).
    const drift = async () => {
      const text = await (await fetch(`${stack.opsUrl('billing')}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith('keel_billing_budget_drift{') && l.includes(`budget_id="${made.body.budget.id}"`));
      return line ? Number(line.split(' ').at(-1)) : 0;
    };
    const current = (await budget(made.body.budget.id)).current;
    const key = `${env.KEEL_REDIS_PREFIX}billing:budget:${tenantId}:${made.body.budget.id}:${Date.parse(current.periodStart)}`;
    expect(await redis.hget(key, 'spent')).toBe('1000');
    await redis.hincrby(key, 'spent', 5_000);
    await eventually(drift, (n) => n === 5_000, { timeoutMs: 20_000, what: 'the drift measured' });
    await redis.hincrby(key, 'spent', -5_000);
    await eventually(drift, (n) => n === 0, { timeoutMs: 20_000, what: 'the drift gone' });
  });

  it('applies a budget made after the processes kept the tenant\'s budgets, from the first call that can see it', async () => {
    // Both processes have read this tenant's budgets for project "kept" (the queue group spreads the calls).
    for (let i = 0; i < 10; i++) expect((await reserve(`kept-warm-${i}`, { attribution: { projectId: 'kept' } })).ok).toBe(true);
    const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'Kept', scope: { kind: 'project', id: 'kept' }, unit: 'USD', limit: '0.0005', period: { unit: 'month' }, thresholds: [{ percent: 100, mode: 'hard' }] },
    });
    expect(made.status).toBe(201);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${made.body.position}`);
    // Every call after that, in either process, counts against it (0.001 USD each: none fits).
    const after = await Promise.all(Array.from({ length: 20 }, (_, i) => reserve(`kept-after-${i}`, { attribution: { projectId: 'kept' } })));
    expect(after.map((r) => (r.ok ? 'granted' : r.code))).toEqual(Array(20).fill('budget_exceeded'));
    expect(after.every((r) => !r.ok && (r.details as { budget: { id: string } }).budget.id === made.body.budget.id)).toBe(true);
    // And its change too: a higher limit lets them through at once.
    const raised = await admin('PATCH', `/api/v1/tenants/${tenantId}/budgets/${made.body.budget.id}`, { body: { limit: '100' } });
    expect(raised.status).toBe(200);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${raised.body.position}`);
    const then = await Promise.all(Array.from({ length: 10 }, (_, i) => reserve(`kept-raised-${i}`, { attribution: { projectId: 'kept' } })));
    expect(then.every((r) => r.ok)).toBe(true);
  });

  it("throttles a budget's calls to its share of the tenant's rate once it passed a throttle threshold", async () => {
    const bad = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'x', scope: { kind: 'project', id: 'thr' }, unit: 'USD', limit: '1', period: { unit: 'day' }, thresholds: [{ percent: 50, mode: 'warn', share: 0.5 }] },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.errors.map((e: { field: string }) => e.field)).toEqual(['thresholds.0.share']);
    // The plan allows 60,000 requests a minute: a share of 0.0001 leaves 6.
    const made = await admin('POST', `/api/v1/tenants/${tenantId}/budgets`, {
      body: { name: 'Throttled', scope: { kind: 'project', id: 'thr' }, unit: 'USD', limit: '0.002', period: { unit: 'day' }, thresholds: [{ percent: 50, mode: 'throttle', share: 0.0001 }] },
    });
    expect(made.status).toBe(201);
    await admin('GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${made.body.position}`);
    const call = (id: string) => reserve(id, { attribution: { projectId: 'thr' }, estimate: { inputTokens: '1' } });
    // Below the threshold: not throttled.
    const before = await Promise.all(Array.from({ length: 10 }, (_, i) => call(`thr-before-${i}`)));
    expect(before.every((r) => r.ok)).toBe(true);
    const used = await admin('POST', `/api/v1/tenants/${tenantId}/usage`, { body: { records: [{ id: 'thr-use', occurredAt: new Date().toISOString(), model: 'm-1', attribution: { projectId: 'thr' }, quantities: { inputTokens: '1500' } }] } });
    expect(used.status).toBe(202);
    await eventually(() => budget(made.body.budget.id), (b) => Number(b.current.spent) >= 0.0015, { timeoutMs: 20_000, what: 'the spend past 50 %' });
    const after = await Promise.all(Array.from({ length: 9 }, (_, i) => call(`thr-after-${i}`)));
    expect(after.filter((r) => r.ok)).toHaveLength(6);
    const refused = after.filter((r) => !r.ok);
    expect(refused.map((r) => !r.ok && r.code)).toEqual(['rate_limited', 'rate_limited', 'rate_limited']);
    expect(refused[0]).toMatchObject({ details: { budget: { id: made.body.budget.id, name: 'Throttled', percent: 50, perMinute: 6 } } });
    // Over HTTP: 429 with a problem naming the budget.
    const http = await admin('POST', `/api/v1/tenants/${tenantId}/usage/reservations`, { body: { requestId: 'thr-http', model: 'm-1', attribution: { projectId: 'thr' }, estimate: { inputTokens: '1' } } });
    expect(http.status).toBe(429);
    expect(http.body).toMatchObject({ code: 'rate_limited', budget: { name: 'Throttled' } });
  });
});
