// `npm run bench`: loads a running Keel from this separate process and prints each figure
// next to a baseline measured in the same run. The last line is one JSON object.
// Target: KEEL_URL (default http://127.0.0.1:8080) with KEEL_BOOTSTRAP_TOKEN or .keel/bootstrap-token,
// and DATABASE_URL to watch the ledger and the read model. With no Keel answering there, it
// starts one of its own in an isolated namespace (built code, like the tests) and removes it after.
import { fork } from 'node:child_process';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fromLib = (lib) => createRequire(join(root, 'libs', lib, 'package.json'));
const autocannon = createRequire(join(root, 'package.json'))('autocannon');
const { Client } = fromLib('database')('pg');
const { connect } = fromLib('messaging')('nats');

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const creates = Number(process.env.BENCH_CREATES ?? 3000);
const log = (...a) => console.error(...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ready(url) {
  try {
    return (await fetch(`${url}/ready`, { signal: AbortSignal.timeout(1000) })).ok;
  } catch {
    return false;
  }
}

async function target() {
  const url = process.env.KEEL_URL ?? 'http://127.0.0.1:8080';
  const tokenFile = join(root, '.keel', 'bootstrap-token');
  const token = process.env.KEEL_BOOTSTRAP_TOKEN ?? (existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : undefined);
  if (token && (await ready(url))) {
    return { url, token, databaseUrl: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/keel', natsUrl: process.env.NATS_URL ?? 'nats://127.0.0.1:4222', stop: async () => {} };
  }
  log(`no Keel at ${url}; starting one in an isolated namespace`);
  const testing = createRequire(join(root, 'package.json'))(join(root, 'libs', 'testing', 'dist', 'index.js'));
  process.env.KEEL_TEST_RUN = `bench${randomBytes(2).toString('hex')}`;
  const env = testing.isolatedEnv('bench');
  const stack = new testing.Stack(env);
  await stack.startAll();
  return {
    url: stack.gatewayUrl,
    token: stack.token,
    databaseUrl: env.DATABASE_URL,
    natsUrl: env.NATS_URL,
    stop: async () => {
      await stack.stop();
      await testing.cleanupEnv(env);
    },
  };
}

function cannon(opts) {
  return new Promise((resolve, reject) => autocannon({ connections: 50, pipelining: 1, ...opts }, (err, r) => (err ? reject(err) : resolve(r))));
}

/** The bare Fastify hello-world, in its own process for the whole run. */
async function startHello() {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = fork(join(root, 'bench', 'hello-fastify.mjs'), [String(port)], { stdio: 'inherit' });
  await new Promise((r) => child.once('message', r));
  return { url: `http://127.0.0.1:${port}/`, stop: () => child.kill() };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * A GET figure against the hello-world baseline, measured in alternating rounds (baseline,
 * target, baseline, target, …) so that a slow spell of a shared machine weighs on both: the
 * ratio is the median of the rounds' ratios.
 */
async function pairedGet(hello, url, headers, rounds = 3) {
  return paired(hello, { url, headers }, rounds);
}

/** `pairedGet` for any request autocannon can make (`target`: its options). */
async function paired(hello, target, rounds = 3) {
  const each = Math.max(3, Math.round(seconds / rounds));
  await cannon({ url: hello.url, duration: 2 });
  await cannon({ ...target, duration: 2 });
  const base = [];
  const measured = [];
  for (let i = 0; i < rounds; i++) {
    const b = await cannon({ url: hello.url, duration: each });
    const r = await cannon({ ...target, duration: each });
    if (r.non2xx || r.errors) throw new Error(`${target.url}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
    base.push(b);
    measured.push(r);
  }
  const mean = (rs) => rs.reduce((sum, r) => sum + r.requests.average, 0) / rs.length;
  return {
    rps: mean(measured),
    p99: median(measured.map((r) => r.latency.p99)),
    baseline: mean(base),
    baselineP99: median(base.map((r) => r.latency.p99)),
    ratio: median(measured.map((r, i) => r.requests.average / base[i].requests.average)),
  };
}

/**
 * Watches the ledger and the tenant read model: each tracked create (its position and when its
 * request was sent) is done once both hold it; its delay is request sent → visible in both.
 */
async function visibility(t) {
  const db = new Client({ connectionString: t.databaseUrl });
  await db.connect();
  const pending = [];
  const delays = [];
  let lastVisible = 0;
  let polling = true;
  const poller = (async () => {
    while (polling || pending.length) {
      const { rows } = await db.query(
        `SELECT (SELECT coalesce(max(seq), 0) FROM audit.ledger)::bigint AS ledger,
                (SELECT position FROM tenant.projection_checkpoints WHERE name = 'tenants')::bigint AS model`,
      );
      const visible = Math.min(Number(rows[0].ledger), Number(rows[0].model));
      const now = performance.now();
      for (let i = pending.length - 1; i >= 0; i--) {
        if (pending[i].position <= visible) {
          delays.push(now - pending[i].t0);
          lastVisible = now;
          pending.splice(i, 1);
        }
      }
      await sleep(2);
    }
  })();
  return {
    track: (position, t0) => pending.push({ position, t0 }),
    /** Waits until every tracked create is visible: the delays (sorted) and when the last became visible. */
    async done() {
      polling = false;
      await poller;
      await db.end();
      delays.sort((a, b) => a - b);
      return { delays, lastVisible, p99: delays[Math.floor(delays.length * 0.99)], p50: delays[Math.floor(delays.length / 2)] };
    },
  };
}

const createBody = (run, n) => JSON.stringify({ slug: `bench-${run}-${n}`, name: 'Bench', plan: 'starter' });

async function createEndToEnd(t, amount = creates, connections = 64) {
  const watch = await visibility(t);
  const run = randomBytes(3).toString('hex');
  let n = 0;
  const start = performance.now();
  // autocannon drives the load (a cheap client, as for the GET figure); each connection has
  // one request in flight, so its context carries that request's start time.
  const result = await cannon({
    url: t.url,
    connections: Math.min(connections, amount),
    amount,
    requests: [
      {
        method: 'POST',
        path: '/api/v1/tenants',
        headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
        setupRequest: (req, context) => {
          context.t0 = performance.now();
          return { ...req, body: createBody(run, n++) };
        },
        onResponse: (status, body, context) => {
          if (status !== 201) throw new Error(`create answered ${status}: ${body}`);
          watch.track(JSON.parse(body).position, context.t0);
        },
      },
    ],
  });
  if (result.non2xx || result.errors) throw new Error(`creates: ${result.non2xx} non-2xx answers, ${result.errors} errors`);
  const seen = await watch.done();
  return { perSecond: amount / ((seen.lastVisible - start) / 1000), p99: seen.p99 };
}

/** One POST of JSON text on a keep-alive agent (node:http: a cheap client, as autocannon is for the GETs); the body parsed when it is JSON. */
function postJson(agent, base, path, text, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: base.hostname, port: base.port, path, method: 'POST', agent, headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } },
      (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (data += c));
        res.on('error', reject);
        res.on('end', () => {
          // A proxy's error page or an empty body is reported as what it is, not as a JSON error.
          let parsed;
          try {
            parsed = JSON.parse(data);
          } catch {
            parsed = data;
          }
          resolve({ status: res.statusCode, body: parsed });
        });
      },
    );
    req.setTimeout(30_000, () => req.destroy(new Error(`${path}: no answer within 30 s`)));
    req.on('error', reject);
    req.end(text);
  });
}

/**
 * Creates at a steady `rate` (open loop: a request every 1/rate s, whatever the answers do, on
 * keep-alive connections), each timed from its request to being in the ledger and the read model.
 * autocannon's own rate limit sends each second's requests in a burst, so it is not used here.
 */
async function createPaced(t, rate, count) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const target = new URL(t.url);
  const watch = await visibility(t);
  const run = randomBytes(3).toString('hex');
  const post = async (n) => {
    const t0 = performance.now();
    const res = await postJson(agent, target, '/api/v1/tenants', createBody(run, n), { authorization: `Bearer ${t.token}` });
    if (res.status !== 201) throw new Error(`create answered ${res.status}: ${JSON.stringify(res.body)}`);
    watch.track(res.body.position, t0);
  };
  const start = performance.now();
  const sent = [];
  for (let i = 0; i < count; i++) {
    const wait = start + (i * 1000) / rate - performance.now();
    if (wait > 1) await sleep(wait);
    sent.push(post(i));
  }
  await Promise.all(sent);
  const achieved = count / ((performance.now() - start) / 1000);
  const seen = await watch.done();
  agent.destroy();
  return { rate, achieved, p50: seen.p50, p99: seen.p99 };
}

async function jetStreamBaseline(natsUrl) {
  const nc = await connect({ servers: natsUrl });
  const jsm = await nc.jetstreamManager();
  const js = nc.jetstream();
  const name = `BENCH_${randomBytes(3).toString('hex').toUpperCase()}`;
  await jsm.streams.add({ name, subjects: [`${name.toLowerCase()}.>`], storage: 'file', duplicate_window: 120e9 });
  const payload = new TextEncoder().encode(JSON.stringify({ pad: 'x'.repeat(600) }));
  const total = creates * 4;
  try {
    let sent = 0;
    const start = performance.now();
    const window = async () => {
      while (sent < total) {
        const n = sent++;
        await js.publish(`${name.toLowerCase()}.evt.${n % 64}`, payload, { msgID: `${name}-${n}` });
      }
    };
    await Promise.all(Array.from({ length: 256 }, window));
    return { perSecond: total / ((performance.now() - start) / 1000) };
  } finally {
    await jsm.streams.delete(name);
    await nc.close();
  }
}

/** Raw Argon2id verifications per second on this machine with Keel's parameters: what bounds a sign-in. */
async function argon2Baseline() {
  const argon2 = createRequire(join(root, 'services', 'auth', 'package.json'))('argon2');
  const options = { type: argon2.argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 };
  const hash = await argon2.hash('correct horse battery staple', options);
  const start = performance.now();
  let n = 0;
  // Two at a time: argon2 runs on libuv's thread pool, as in the auth service.
  await Promise.all([0, 1].map(async () => {
    while (performance.now() - start < seconds * 500) {
      await argon2.verify(hash, 'correct horse battery staple');
      n++;
    }
  }));
  return { perSecond: n / ((performance.now() - start) / 1000) };
}

async function json(t, method, path, body, token = t.token) {
  const res = await fetch(`${t.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const parsed = await res.json();
  if (res.status >= 300) throw new Error(`${method} ${path} answered ${res.status}: ${JSON.stringify(parsed)}`);
  return parsed;
}

/**
 * billing.admit_http: reservations over HTTP (POST /api/v1/tenants/{id}/usage/reservations, a new
 * request id each, against a budget with room for all), alternating with the hello-world as the
 * GET figures are.
 */
async function admitHttp(t, hello) {
  const quotas = { maxUsers: 10, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 10_000_000 };
  const created = await json(t, 'POST', '/api/v1/tenants', { slug: `bench-admit-${randomBytes(3).toString('hex')}`, name: 'Bench', plan: 'custom', quotas });
  const tenantId = created.tenant.id;
  const model = `bench-http-${randomBytes(3).toString('hex')}`;
  const price = await json(t, 'POST', '/api/v1/billing/prices', { model, rates: { inputPerMTok: '1' }, effectiveFrom: '2026-01-01T00:00:00Z' });
  await json(t, 'GET', `/api/v1/billing/prices?consistentWith=${price.position}`);
  const budget = await json(t, 'POST', `/api/v1/tenants/${tenantId}/budgets`, { name: 'bench', scope: { kind: 'tenant' }, unit: 'USD', limit: '1000000', period: { unit: 'month' } });
  await json(t, 'GET', `/api/v1/tenants/${tenantId}/budgets?consistentWith=${budget.position}`);
  let n = 0;
  return paired(hello, {
    url: `${t.url}/api/v1/tenants/${tenantId}/usage/reservations`,
    method: 'POST',
    headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
    requests: [{ setupRequest: (req) => ({ ...req, body: JSON.stringify({ requestId: `h-${n++}`, model, estimate: { inputTokens: '100' }, ttlSeconds: 60 }) }) }],
  });
}

/** A tenant whose rate limit does not cap the benchmark, and users in it (one per connection). */
async function benchUser(t) {
  const slug = `bench-user-${randomBytes(3).toString('hex')}`;
  const quotas = { maxUsers: 100, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 0, requestsPerMinute: 10_000_000 };
  const created = await json(t, 'POST', '/api/v1/tenants', { slug, name: 'Bench', plan: 'custom', quotas });
  await json(t, 'GET', `/api/v1/tenants/${created.tenant.id}?consistentWith=${created.position}`);
  const password = 'correct horse battery staple';
  const logins = [];
  for (let i = 0; i < 16; i++) {
    const email = `bench${i}@keel.test`;
    await json(t, 'POST', `/api/v1/tenants/${created.tenant.id}/users`, { email, name: 'Bench', password, roles: ['viewer'] });
    logins.push({ tenant: slug, email, password });
  }
  return { tenantId: created.tenant.id, slug, login: logins[0], logins };
}

async function loginRate(t, user) {
  // Different users on different connections: one account signing in many times at once is
  // what the brute-force protection is there to refuse.
  let next = 0;
  const result = await cannon({
    url: t.url,
    connections: 8,
    duration: seconds,
    requests: [
      {
        method: 'POST',
        path: '/api/v1/auth/login',
        headers: { 'content-type': 'application/json' },
        setupRequest: (req, context) => {
          context.login ??= user.logins[next++ % user.logins.length];
          return { ...req, body: JSON.stringify(context.login) };
        },
      },
    ],
  });
  if (result.non2xx || result.errors) throw new Error(`logins: ${result.non2xx} non-2xx answers, ${result.errors} errors`);
  return { perSecond: result.requests.average, p99: result.latency.p99 };
}

async function refreshRate(t, user) {
  // Each of 16 sessions rotates its own refresh token in a loop: every answer carries the next
  // token, so requests on one session cannot be prepared ahead (autocannon would reuse tokens).
  // The client is node:http on keep-alive connections: fetch (undici) cost 0.75 ms of CPU per
  // refresh on this 2-core machine, a fifth of all the CPU a refresh used, taken from Keel.
  const pool = [];
  for (const login of user.logins) pool.push((await json(t, 'POST', '/api/v1/auth/login', login)).refreshToken);
  const agent = new http.Agent({ keepAlive: true, maxSockets: pool.length });
  const base = new URL(t.url);
  const rotate = async (ms, latencies) => {
    const start = performance.now();
    await Promise.all(
      pool.map(async (_, i) => {
        while (performance.now() - start < ms) {
          const t0 = performance.now();
          const res = await postJson(agent, base, '/api/v1/auth/refresh', JSON.stringify({ refreshToken: pool[i] }));
          if (res.status !== 200) throw new Error(`refresh answered ${res.status}: ${JSON.stringify(res.body)}`);
          pool[i] = res.body.refreshToken;
          latencies?.push(performance.now() - t0);
        }
      }),
    );
    return performance.now() - start;
  };
  const latencies = [];
  let elapsed;
  try {
    // A warm-up as the GET figures have (the refresh path's code compiled in every process), not counted.
    await rotate(2_000);
    elapsed = await rotate(seconds * 1000, latencies);
  } finally {
    agent.destroy();
  }
  latencies.sort((a, b) => a - b);
  return { perSecond: latencies.length / (elapsed / 1000), p99: Math.round(latencies[Math.floor(latencies.length * 0.99)]) };
}

const t = await target();
const hello = await startHello();
try {
  const machine = `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}, node ${process.version}`;
  log(`machine: ${machine}`);
  const created = await (
    await fetch(`${t.url}/api/v1/tenants`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ slug: `bench-get-${randomBytes(3).toString('hex')}`, name: 'Bench', plan: 'starter' }),
    })
  ).json();
  log('gateway.tenant_get: authenticated GET /api/v1/tenants/{id}, alternating with a bare Fastify hello-world…');
  const get = await pairedGet(hello, `${t.url}/api/v1/tenants/${created.tenant.id}`, { authorization: `Bearer ${t.token}` });
  log('tenant.create_e2e: baseline (pipelined JetStream publishes)…');
  const publishes = await jetStreamBaseline(t.natsUrl);
  // Warmed up as the GET figures are (their first rounds are not counted): a first round as large as
  // the measured one (BENCH_CREATES), so that every process on the create path runs compiled code
  // with its connections open and its heap grown. On this machine, in windows of 500, a fresh
  // stack's rate rose from 568 to 1,371 creates/s over its first 3,000; that first round is
  // reported beside the figure (`firstRound`), not hidden.
  log(`tenant.create_e2e: ${creates} creates to warm up (reported as firstRound, not the figure)…`);
  const firstRound = await createEndToEnd(t);
  log(`tenant.create_e2e: ${creates} creates, 64 in flight…`);
  const e2e = await createEndToEnd(t);
  log(`tenant.create_e2e: ${creates} creates, 128 in flight (is 64 the bound, or the machine?)…`);
  const e2eWide = await createEndToEnd(t, creates, 128);
  log('tenant.create_e2e: 2,500 creates at a steady 500/s…');
  const paced = await createPaced(t, 500, 2_500);
  const user = await benchUser(t);
  const access = (await json(t, 'POST', '/api/v1/auth/login', user.login)).accessToken;
  log('gateway.authed_get: GET /api/v1/tenants/{id} with a user access token, alternating with the hello-world…');
  const authed = await pairedGet(hello, `${t.url}/api/v1/tenants/${user.tenantId}`, { authorization: `Bearer ${access}` });
  log('billing.admit_http: reservations over HTTP, alternating with the hello-world…');
  const admit = await admitHttp(t, hello);
  log('auth.login: baseline (raw Argon2id verifications)…');
  const argon = await argon2Baseline();
  log('auth.login: sign-ins…');
  const logins = await loginRate(t, user);
  log('auth.refresh: refreshes…');
  const refreshes = await refreshRate(t, user);
  // The backbone's own figures, on a namespace of their own (see bench/backbone.mjs).
  const { backboneBenchmarks } = await import('./backbone.mjs');
  const backbone = await backboneBenchmarks();
  // Billing's hot path, on a namespace of its own too (see bench/billing.mjs).
  const { billingBenchmarks } = await import('./billing.mjs');
  const billing = await billingBenchmarks();
  const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  const result = {
    machine,
    benchmarks: [
      {
        name: 'gateway.tenant_get',
        unit: 'req/s',
        value: round(get.rps),
        p99Ms: get.p99,
        connections: 50,
        baseline: { name: 'fastify hello-world (alternating rounds)', value: round(get.baseline), p99Ms: get.baselineP99 },
        ratio: round(get.ratio, 3),
        goal: 'ratio >= 0.4',
      },
      {
        name: 'gateway.authed_get',
        unit: 'req/s',
        value: round(authed.rps),
        p99Ms: authed.p99,
        connections: 50,
        baseline: { name: 'fastify hello-world (alternating rounds)', value: round(authed.baseline), p99Ms: authed.baselineP99 },
        ratio: round(authed.ratio, 3),
        goal: 'ratio >= 0.5',
      },
      {
        name: 'auth.login',
        unit: 'sign-ins/s',
        value: round(logins.perSecond),
        p99Ms: logins.p99,
        connections: 8,
        baseline: { name: 'raw Argon2id verifications (m=19 MiB, t=2, p=1), 2 in parallel', value: round(argon.perSecond) },
        ratio: round(logins.perSecond / argon.perSecond, 3),
        goal: `>= 15/s per core (${15 * os.cpus().length}/s here)`,
      },
      {
        name: 'auth.refresh',
        unit: 'refreshes/s',
        value: round(refreshes.perSecond),
        p99Ms: refreshes.p99,
        connections: 16,
        baseline: { name: 'fastify hello-world', value: round(get.baseline) },
        ratio: round(refreshes.perSecond / get.baseline, 3),
        goal: '>= 500/s',
      },
      {
        name: 'tenant.create_e2e',
        unit: 'creates/s (HTTP 201 to ledger and read model)',
        value: round(e2e.perSecond),
        p99Ms: round(e2e.p99),
        creates,
        connections: 64,
        with128InFlight: { value: round(e2eWide.perSecond), p99Ms: round(e2eWide.p99) },
        firstRound: { value: round(firstRound.perSecond), p99Ms: round(firstRound.p99), note: 'the warm-up round: the first creates these processes serve' },
        baseline: { name: 'pipelined JetStream publishes', value: round(publishes.perSecond) },
        ratio: round(e2e.perSecond / publishes.perSecond, 3),
        atSteadyRate: { rate: paced.rate, achieved: round(paced.achieved), p50Ms: round(paced.p50), p99Ms: round(paced.p99) },
        goal: '>= 1000 creates/s, p99 < 100 ms at 500/s',
      },
      {
        name: 'ledger.append',
        unit: 'events/s (a backlog on the stream → committed ledger rows)',
        value: round(backbone.ledgerAppend.perSecond),
        events: backbone.ledgerAppend.events,
        baseline: { name: 'multi-row INSERTs of the same rows, 500 per transaction', value: round(backbone.ledgerAppend.baseline) },
        ratio: round(backbone.ledgerAppend.perSecond / backbone.ledgerAppend.baseline, 3),
        goal: '>= 15000/s',
      },
      {
        name: 'facts.append',
        unit: 'facts/s (fact path publish → in the ledger)',
        value: round(backbone.factsAppend.perSecond),
        publishOnly: round(backbone.factsAppend.publishOnly),
        baseline: { name: 'raw pipelined JetStream publishes of the same messages', value: round(backbone.factsAppend.baseline) },
        ratio: round(backbone.factsAppend.perSecond / backbone.factsAppend.baseline, 3),
        goal: '>= 10000/s',
      },
      {
        name: 'projection.rebuild',
        unit: 'events/s replayed into the tenant read model beside the live one',
        value: round(backbone.projectionRebuild.perSecond),
        replayed: backbone.projectionRebuild.replayed,
        firstInProcess: round(backbone.projectionRebuild.firstInProcess),
        goal: '>= 20000 events/s',
      },
      {
        name: 'ledger.verify',
        unit: 'entries/s',
        value: round(backbone.ledgerVerify.perSecond),
        checked: backbone.ledgerVerify.checked,
        baseline: { name: 'a scan of the same rows with one SHA-256 each', value: round(backbone.ledgerVerify.baseline) },
        ratio: round(backbone.ledgerVerify.perSecond / backbone.ledgerVerify.baseline, 3),
        goal: '>= 80000 entries/s',
      },
      {
        name: 'personal_data.seal',
        unit: 'facts/s into the ledger, personal data sealed',
        value: round(backbone.personalDataSeal.perSecond),
        facts: backbone.personalDataSeal.facts,
        baseline: { name: 'the same facts in clear (alternating rounds, median)', value: round(backbone.personalDataSeal.baseline) },
        ratio: round(backbone.personalDataSeal.ratio, 3),
        goal: 'ratio >= 0.9 (sealing costs the write path at most 10 %)',
      },
      {
        name: 'billing.ingest',
        unit: 'usage records/s (cmd.billing.record_usage, batches of 1,000, 4 in flight → counted in the usage projection)',
        value: round(billing.ingest.perSecond),
        answered: round(billing.ingest.answeredPerSecond),
        records: billing.ingest.records,
        baseline: { name: 'raw pipelined JetStream publishes of as many messages', value: round(billing.ingest.baseline) },
        ratio: round(billing.ingest.perSecond / billing.ingest.baseline, 3),
        goal: '>= 10000/s',
      },
      {
        name: 'billing.admit_http',
        unit: 'reservations/s (POST /api/v1/tenants/{id}/usage/reservations, operator token)',
        value: round(admit.rps),
        p99Ms: admit.p99,
        connections: 50,
        baseline: { name: 'fastify hello-world (alternating rounds)', value: round(admit.baseline), p99Ms: admit.baselineP99 },
        ratio: round(admit.ratio, 3),
        goal: 'ratio >= 0.4',
      },
      {
        name: 'billing.report',
        unit: `ms per month report (qry.billing.usage_report, one at a time; no grouping, team and model, user) over ${billing.report.records} records (${billing.report.rollupRows} rollup rows)`,
        value: round(billing.report.p99),
        p50Ms: round(billing.report.p50),
        p99Ms: round(billing.report.p99),
        requests: billing.report.requests,
        goal: 'p99 < 200 ms',
      },
      {
        name: 'billing.admit',
        unit: 'reserve + settle pairs/s over NATS, 200 in flight',
        value: round(billing.admit.perSecond),
        p99Ms: round(billing.admit.p99),
        granted: billing.admit.granted,
        refused: billing.admit.refused,
        overrun: billing.admit.overrun,
        baseline: { name: 'the reserve step alone as a Redis Lua script, 200 in flight', value: round(billing.admit.baseline), p99Ms: round(billing.admit.baselineP99) },
        ratio: round(billing.admit.perSecond / billing.admit.baseline, 3),
        goal: '>= 10000/s, p99 < 10 ms, 0 overrun',
      },
    ],
  };
  console.log(JSON.stringify(result));
} finally {
  hello.stop();
  await t.stop();
}
