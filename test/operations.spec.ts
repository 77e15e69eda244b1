import { connect, headers as natsHeaders, NatsConnection } from 'nats';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

/** Operating the read models through the gateway: list, rebuild, dead letters, ledger incidents. */
describe('operations through the gateway', () => {
  const env = isolatedEnv('operations');
  const stack = new Stack(env);
  let nc: NatsConnection;
  let http: ReturnType<typeof httpClient>;

  const projections = async () => {
    const res = await http('GET', '/api/v1/admin/projections');
    expect(res.status).toBe(200);
    return res.body.items as { name: string; checkpoint: number; lag: number; healthy: boolean; deadLetters: number; incidents?: number; error?: string }[];
  };

  beforeAll(async () => {
    await stack.start('audit', 'tenant', 'auth', 'billing', 'gateway');
    http = httpClient(stack.gatewayUrl, stack.token);
    nc = await connect({ servers: env.NATS_URL });
  });

  afterAll(async () => {
    await nc?.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('lists every read model and the ledger with checkpoint, lag, health and dead letters', async () => {
    const created = await http('POST', '/api/v1/tenants', { body: { slug: 'ops-co', name: 'Ops', plan: 'starter' } });
    expect(created.status).toBe(201);
    const items = await eventually(projections, (list) => list.find((p) => p.name === 'tenant.tenants')!.checkpoint >= created.body.position, {
      timeoutMs: 30_000,
      what: 'the tenant read model to apply the create',
    });
    expect(items.map((p) => p.name).sort()).toEqual(['audit.ledger', 'auth.erasures', 'auth.users', 'billing.invoices', 'billing.plans', 'billing.seats', 'billing.teams', 'billing.usage', 'billing.webhooks', 'tenant.tenants']);
    for (const p of items) expect(p).toMatchObject({ healthy: true, deadLetters: 0, lag: expect.any(Number), checkpoint: expect.any(Number) });
    expect(items.find((p) => p.name === 'audit.ledger')).toMatchObject({ incidents: 0 });
  });

  it('rebuilds a read model on request and refuses what is not one, with problem+json', async () => {
    const res = await http('POST', '/api/v1/admin/projections/tenant.tenants/rebuild');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ name: 'tenant.tenants', position: expect.any(Number), replayed: expect.any(Number) });
    const read = await http('GET', '/api/v1/tenants/ops-co');
    expect(read.status).toBe(200);

    const users = await http('POST', '/api/v1/admin/projections/auth.users/rebuild');
    expect(users.status).toBe(200);
    expect(users.body.replayed).toBeGreaterThanOrEqual(1); // the first administrator

    for (const [path, status, code] of [
      ['/api/v1/admin/projections/nonsense/rebuild', 400, 'validation_failed'],
      ['/api/v1/admin/projections/billing.things/rebuild', 404, 'not_found'],
      ['/api/v1/admin/projections/tenant.things/rebuild', 404, 'not_found'],
      ['/api/v1/admin/projections/audit.ledger/rebuild', 409, 'conflict'],
    ] as const) {
      const bad = await http('POST', path);
      expect(bad.status).toBe(status);
      expect(bad.headers.get('content-type')).toContain('application/problem+json');
      expect(bad.body.code).toBe(code);
    }
    const anonymous = await httpClient(stack.gatewayUrl)('GET', '/api/v1/admin/projections');
    expect(anonymous.status).toBe(401);
  });

  it('shows a poison event as a dead letter, lets an operator skip it, and a ledger incident without stopping anything', async () => {
    const js = nc.jetstream();
    const ghost = '0190f1c2-7a3b-7c4d-8e5f-00000000beef';
    const subject = `${env.KEEL_SUBJECT_PREFIX ?? ''}evt.${ghost}.tenant.tenant.${ghost}`;
    // A tenant event for a tenant that never was (the read model cannot apply it), and bytes that are not an envelope.
    await js.publish(
      subject,
      new TextEncoder().encode(
        JSON.stringify({
          id: '0190f1c2-7a3b-7c4d-8e5f-0123456789ab', type: 'tenant.tenant.suspended', schemaVersion: 1, tenantId: ghost,
          aggregateType: 'tenant', aggregateId: ghost, aggregateVersion: 2, occurredAt: new Date().toISOString(),
          actor: { kind: 'system', id: 'ops-test' }, correlationId: 'ops-test', data: { reason: 'ghost' },
        }),
      ),
      { headers: natsHeaders() },
    );
    await js.publish(subject, new TextEncoder().encode('not an envelope'));
    const after = await http('POST', '/api/v1/tenants', { body: { slug: 'after-ghost', name: 'After', plan: 'starter' } });
    expect(after.status).toBe(201);

    const letters = await eventually(
      () => http('GET', '/api/v1/admin/projections/tenant.tenants/dead-letters'),
      (r) => r.body.items?.length === 2,
      { timeoutMs: 30_000, what: 'two dead letters' },
    );
    expect(letters.body.items.map((l: { reason: string }) => l.reason)).toEqual([expect.stringContaining('unknown tenant'), expect.stringContaining('invalid event envelope')]);
    const listed = (await projections()).find((p) => p.name === 'tenant.tenants')!;
    expect(listed).toMatchObject({ healthy: false, deadLetters: 2 });
    const incidents = await eventually(() => http('GET', '/api/v1/admin/ledger/incidents'), (r) => r.body.items?.length === 1, {
      timeoutMs: 30_000,
      what: 'the incident in the ledger',
    });
    expect(incidents.body.items[0]).toMatchObject({ problem: expect.stringContaining('not JSON'), payload: Buffer.from('not an envelope').toString('base64') });
    expect((await http('GET', '/api/v1/tenants/after-ghost')).status).toBe(200);

    for (const letter of letters.body.items as { id: number }[]) {
      const retried = await http('POST', `/api/v1/admin/projections/tenant.tenants/dead-letters/${letter.id}/retry`);
      expect(retried.status).toBe(409);
      const skipped = await http('POST', `/api/v1/admin/projections/tenant.tenants/dead-letters/${letter.id}/skip`);
      expect(skipped.status).toBe(200);
      expect(skipped.body).toMatchObject({ resolution: 'skipped', resolvedBy: expect.stringMatching(/^(service|system|user):/) });
    }
    expect((await projections()).find((p) => p.name === 'tenant.tenants')).toMatchObject({ healthy: true, deadLetters: 0 });
    expect((await http('GET', '/api/v1/admin/projections/tenant.tenants/dead-letters/abc/skip')).status).toBe(404);
    const badId = await http('POST', '/api/v1/admin/projections/tenant.tenants/dead-letters/abc/skip');
    expect(badId.status).toBe(400);
    expect(badId.body.code).toBe('validation_failed');
    const verify = await http('GET', '/api/v1/audit/verify');
    expect(verify.body).toMatchObject({ ok: true, incidents: 1 });
  });
});
