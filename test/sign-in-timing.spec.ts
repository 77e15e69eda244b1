import { performance } from 'node:perf_hooks';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
/** Sign-ins measured per case, interleaved so that load on the machine falls on every case alike. */
const ROUNDS = 21;
/**
 * How far apart the cases may be: each case's median ratio to its rounds' medians, relative to the
 * smallest. Generous for a loaded CI machine,
 * but a path that skips the password hash (an unknown tenant answered at once: 10 ms against 59 ms)
 * is several times faster and fails it.
 */
const TOLERANCE = 0.25;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Sign-in refusals tell nothing by their time: real auth, tenant and gateway processes. */
describe('sign-in timing', () => {
  const env = isolatedEnv('sign-in-timing');
  // Every sign-in comes from one address: the per-address limit on public routes must not be what answers.
  const stack = new Stack(env, { KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: '1000' });
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  const slug = 'timing-co';

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug, name: 'Timing Co', plan: 'enterprise' } });
    expect(created.status).toBe(201);
    const id = created.body.tenant.id as string;
    await eventually(() => operator('GET', `/api/v1/tenants/${id}?consistentWith=${created.body.position}`), (r) => r.status === 200, {
      timeoutMs: 30_000,
      what: 'the tenant in the read model',
    });
    // Wrong passwords go to a different account each round, and the account limit is high: no lock interferes.
    expect((await operator('PATCH', `/api/v1/tenants/${id}/settings`, { body: { maxFailedLogins: 50 } })).status).toBe(200);
    const users = [...Array.from({ length: ROUNDS + 2 }, (_, i) => `wrong-${i}@timing.test`), 'disabled@timing.test'];
    const ids: Record<string, string> = {};
    for (const email of users) {
      const res = await operator('POST', `/api/v1/tenants/${id}/users`, { body: { email, name: email, password: PASSWORD, roles: ['viewer'] } });
      expect(res.status).toBe(201);
      ids[email] = res.body.id;
    }
    expect((await operator('PATCH', `/api/v1/tenants/${id}/users/${ids['disabled@timing.test']}/status`, { body: { status: 'disabled' } })).status).toBe(200);
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('unknown tenant, unknown email, disabled user and wrong password: the same answer, and medians within noise of each other', async () => {
    let n = 0;
    const cases: Record<string, (round: number) => { tenant: string; email: string; password: string }> = {
      'unknown tenant': () => ({ tenant: `no-such-tenant-${n}`, email: `nobody-${n++}@timing.test`, password: PASSWORD }),
      'unknown email': () => ({ tenant: slug, email: `nobody-${n++}@timing.test`, password: PASSWORD }),
      'disabled user': () => ({ tenant: slug, email: 'disabled@timing.test', password: PASSWORD }),
      'wrong password': (round) => ({ tenant: slug, email: `wrong-${round}@timing.test`, password: 'not the right password' }),
    };
    const names = Object.keys(cases);
    const times: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]));
    const answers = new Set<string>();
    const signIn = async (name: string, round: number) => {
      const body = cases[name]!(round);
      const started = performance.now();
      const res = await anonymous('POST', '/api/v1/auth/login', { body });
      const took = performance.now() - started;
      expect({ name, status: res.status }).toEqual({ name, status: 401 });
      answers.add(JSON.stringify({ code: res.body.code, title: res.body.title, detail: res.body.detail }));
      return took;
    };
    // Warm up every path (connections, caches, the decoy hash) before measuring.
    for (const name of names) await signIn(name, ROUNDS + (name === 'wrong password' ? 1 : 0));
    /** Each case's time relative to its round's median: a slow spell of the machine weighs on a whole round, not on one case. */
    const relative: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      // Each round in a different order, so no case always follows the same one.
      const order = names.map((_, i) => names[(i + round) % names.length]!);
      const took: Record<string, number> = {};
      for (const name of order) times[name]!.push((took[name] = await signIn(name, round)));
      const roundMedian = median(Object.values(took));
      for (const name of names) relative[name]!.push(took[name]! / roundMedian);
    }

    expect([...answers]).toHaveLength(1);
    const medians = Object.fromEntries(names.map((name) => [name, Math.round(median(times[name]!) * 10) / 10]));
    const ratios = Object.fromEntries(names.map((name) => [name, Math.round(median(relative[name]!) * 100) / 100]));
    const fastest = Math.min(...Object.values(ratios));
    const slowest = Math.max(...Object.values(ratios));
    // On failure, the medians (ms) and the ratios to each round's median say which path differs.
    expect({ medians, ratios, withinTolerance: slowest <= fastest * (1 + TOLERANCE) }).toEqual({ medians, ratios, withinTolerance: true });
  });
});
