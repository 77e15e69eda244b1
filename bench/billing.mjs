// The billing service's hot-path figures, each against a baseline taken in the same run, on a
// namespace of its own (stream, database, subject prefix, Redis prefix) with the real audit, auth,
// tenant and billing services:
// - billing.admit: reserve + settle pairs over NATS (cmd.billing.reserve, cmd.billing.settle),
//   200 in flight, against a budget with room for part of them; vs the reserve step alone as a
//   Redis Lua script (EVAL of the same shape: check and hold one counter), 200 in flight. Overrun
//   is what the budget shows spent + reserved beyond its limit at the end (must be 0).
// - billing.ingest: usage records in batches of 1,000 (cmd.billing.record_usage, 4 batches in
//   flight) until every one is counted in the usage projection (usage_facts), vs raw pipelined
//   JetStream publishes of the same number of messages.
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rawPublishBaseline } from './backbone.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const req = createRequire(join(root, 'package.json'));
const dist = (lib) => req(join(root, 'libs', lib, 'dist', 'index.js'));
const fromLib = (lib) => createRequire(join(root, 'libs', lib, 'package.json'));
const { Client } = fromLib('database')('pg');
const log = (...a) => console.error(...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const meta = { actor: { kind: 'service', id: 'bench' }, correlationId: 'bench-billing' };

/** `n` tasks with `inFlight` at a time; answers each task's latency (ms) and the elapsed time. */
async function pool(n, inFlight, task) {
  let next = 0;
  const latencies = [];
  const start = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < n) {
        const i = next++;
        const t0 = performance.now();
        await task(i);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  return { elapsed: performance.now() - start, p99: latencies[Math.floor(latencies.length * 0.99)] ?? 0 };
}

/** The reserve step alone: a Lua script that checks and holds one counter, 200 in flight. */
async function redisBaseline(redisUrl, prefix, n) {
  const Redis = dist('testing').Redis;
  const redis = new Redis(redisUrl);
  const key = `${prefix}bench:counter`;
  const lua = `local s = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if s + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'reserved')
return 1`;
  try {
    await pool(2_000, 200, (i) => redis.eval(lua, 2, key, `${prefix}bench:r:w${i}`, 1, 1e15));
    const { elapsed, p99 } = await pool(n, 200, (i) => redis.eval(lua, 2, key, `${prefix}bench:r:${i}`, 1, 1e15));
    return { perSecond: n / (elapsed / 1000), p99 };
  } finally {
    const keys = await redis.keys(`${prefix}bench:*`);
    for (let i = 0; i < keys.length; i += 1000) await redis.del(...keys.slice(i, i + 1000));
    redis.disconnect();
  }
}

/**
 * billing.report: a month's report (qry.billing.usage_report) over the rollups of `n` usage
 * records, one request at a time, grouped three ways (none; team and model; user). The records'
 * rollups are written straight into the usage projection's table, as the projection would make
 * them (a minute, hour and day row per time bucket and attribution): ingesting a million records
 * through the log would take minutes of this run and measure ingest, not the report. The records:
 * spread evenly over last month (UTC), 1,000 users in 50 teams, 10 models, 100 projects.
 */
async function reportBench(rpc, db, tenantId, n) {
  const now = new Date();
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
  const end = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const period = start.toISOString().slice(0, 7);
  log(`billing.report: ${n} usage records' rollups for ${period}, then month reports one at a time…`);
  const step = (end - start) / 1000 / n;
  const t0 = performance.now();
  await db.query(`SET maintenance_work_mem = '256MB'`);
  await db.query(
    `INSERT INTO billing.usage_rollups (tenant_id, grain, bucket, model, user_id, team_id, project_id, cost_center, environment, api_key_id,
                                        input_tokens, cached_input_tokens, output_tokens, requests, gpu_seconds, cost, records, unpriced)
     SELECT $1, g.grain, date_trunc(g.grain, r.at, 'UTC'), r.model, r.user_id, r.team_id, r.project_id, r.cost_center, '', '',
            sum(1200), 0, sum(300), sum(1), 0, sum(0.0024), count(*), 0
       FROM (SELECT $2::timestamptz + (i * $3::float8) * interval '1 second' AS at, 'bench-model-' || (i % 10) AS model, 'u' || (i % 1000) AS user_id,
                    't' || (i % 50) AS team_id, 'p' || (i % 100) AS project_id, 'cc' || (i % 5) AS cost_center
               FROM generate_series(0, $4::int - 1) AS i) r,
            (VALUES ('minute'), ('hour'), ('day')) AS g(grain)
      GROUP BY g.grain, date_trunc(g.grain, r.at, 'UTC'), r.model, r.user_id, r.team_id, r.project_id, r.cost_center`,
    [tenantId, start.toISOString(), step, n],
  );
  await db.query(`ANALYZE billing.usage_rollups`);
  const rows = Number((await db.query(`SELECT count(*)::int AS n FROM billing.usage_rollups WHERE tenant_id = $1`, [tenantId])).rows[0].n);
  log(`  seeded ${rows} rollup rows in ${Math.round(performance.now() - t0)} ms`);
  const groupings = [[], ['team', 'model'], ['user']];
  const latencies = [];
  let total;
  for (let round = 0; round < 21; round++) {
    for (const groupBy of groupings) {
      const t = performance.now();
      const r = await rpc.request('qry.billing.usage_report', { tenantId, period, timeZone: 'UTC', groupBy }, 30_000);
      if (round > 0) latencies.push(performance.now() - t);
      total = r.total.records;
    }
  }
  if (total !== n) throw new Error(`the report counted ${total} records, not ${n}`);
  latencies.sort((a, b) => a - b);
  return { records: n, rollupRows: rows, requests: latencies.length, p50: latencies[Math.floor(latencies.length / 2)], p99: latencies[Math.floor(latencies.length * 0.99)] };
}

export async function billingBenchmarks({
  pairs = Number(process.env.BENCH_ADMITS ?? 10_000),
  records = Number(process.env.BENCH_RECORDS ?? 20_000),
  reportRecords = Number(process.env.BENCH_REPORT_RECORDS ?? 1_000_000),
} = {}) {
  const testing = dist('testing');
  const { parseConfig } = dist('config');
  const messaging = dist('messaging');
  process.env.KEEL_TEST_RUN ??= `bench${randomBytes(2).toString('hex')}`;
  const env = testing.isolatedEnv('billingbench');
  const stack = new testing.Stack(env, { KEEL_LOG_LEVEL: 'warn' });
  const results = {};
  try {
    await stack.start('audit', 'auth', 'tenant', 'billing');
    const m = await messaging.connectMessaging(parseConfig(env), 'bench-billing');
    const rpc = new messaging.RpcClient(m);
    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      const tenant = await rpc.request('cmd.tenant.create', { meta, payload: { slug: `bench-billing-${randomBytes(3).toString('hex')}`, name: 'Bench', plan: 'enterprise' } });
      const tenantId = tenant.state.id;
      const price = await rpc.request('cmd.billing.publish_price', {
        meta,
        payload: { scope: 'platform', data: { model: 'bench-model', rates: { inputPerMTok: '1', outputPerMTok: '4' }, effectiveFrom: '2026-01-01T00:00:00Z' } },
      });
      // Room for 80 % of the pairs' estimates (1,000 input tokens each: 0.001 USD).
      const limit = ((pairs * 0.8) / 1000).toFixed(3);
      const budget = await rpc.request('cmd.billing.create_budget', {
        meta,
        payload: { tenantId, data: { name: 'bench', scope: { kind: 'team', id: 'bench' }, unit: 'USD', limit, period: { unit: 'month' } } },
      });
      // Until the projections hold the tenant, the price and the budget.
      for (const what of [price.position, budget.position]) {
        for (;;) {
          try {
            await rpc.request('qry.billing.budgets', { tenantId, consistentWith: what });
            break;
          } catch {
            await sleep(50);
          }
        }
      }
      for (;;) {
        const list = await rpc.request('qry.billing.budgets', { tenantId });
        if (list.items.some((b) => b.name.startsWith('Plan'))) break;
        await sleep(50);
      }

      log(`billing.admit: ${pairs} reserve + settle pairs over NATS, 200 in flight…`);
      const call = (id) => ({ meta, payload: { tenantId, data: { requestId: id, model: 'bench-model', attribution: { teamId: 'bench', userId: 'u1' }, estimate: { inputTokens: '1000' } } } });
      let granted = 0;
      let refused = 0;
      const pair = async (id) => {
        try {
          await rpc.request('cmd.billing.reserve', call(id));
        } catch (error) {
          if (error.code !== 'budget_exceeded') throw error;
          refused++;
          return;
        }
        granted++;
        await rpc.request('cmd.billing.settle', { meta, payload: { tenantId, requestId: id, data: { quantities: { inputTokens: '1000' } } } });
      };
      await pool(500, 200, (i) => pair(`warm-${i}`));
      const measured = await pool(pairs, 200, (i) => pair(`pair-${i}`));
      const after = (await rpc.request('qry.billing.budgets', { tenantId })).items.find((b) => b.name === 'bench');
      const overrun = Math.max(0, Number(after.current.spent) + Number(after.current.reserved) - Number(after.limit));
      const redis = await redisBaseline(env.REDIS_URL, env.KEEL_REDIS_PREFIX, pairs);
      results.admit = { perSecond: pairs / (measured.elapsed / 1000), p99: measured.p99, granted, refused, overrun, baseline: redis.perSecond, baselineP99: redis.p99 };
      log(`  ${JSON.stringify(results.admit)}`);

      log(`billing.ingest: ${records} usage records in batches of 1,000, 4 batches in flight, until counted…`);
      const counted = async () => Number((await db.query("SELECT count(*)::int AS n FROM billing.usage_facts WHERE tenant_id = $1 AND source = 'bench'", [tenantId])).rows[0].n);
      const before = await counted();
      const now = new Date().toISOString();
      const batches = Math.ceil(records / 1000);
      const start = performance.now();
      await pool(batches, 4, (b) =>
        rpc.request(
          'cmd.billing.record_usage',
          {
            meta,
            payload: {
              tenantId,
              data: {
                source: 'bench',
                records: Array.from({ length: 1000 }, (_, i) => ({
                  id: `rec-${b}-${i}`, occurredAt: now, model: 'bench-model',
                  attribution: { teamId: `t${i % 10}`, userId: `u${i % 100}` }, quantities: { inputTokens: '1200', outputTokens: '300' },
                })),
              },
            },
          },
          60_000,
        ),
      );
      const answered = performance.now();
      while ((await counted()) < before + batches * 1000) await sleep(20);
      const ingestRate = (batches * 1000) / ((performance.now() - start) / 1000);
      const data = new TextEncoder().encode(JSON.stringify({ n: 1, quantities: { inputTokens: '1200', outputTokens: '300' }, model: 'bench-model', attribution: { teamId: 't1' } }));
      const raw = await rawPublishBaseline(env.NATS_URL, Array.from({ length: batches * 1000 }, (_, i) => ({ id: `raw-${i}`, data })));
      results.ingest = { perSecond: ingestRate, answeredPerSecond: (batches * 1000) / ((answered - start) / 1000), records: batches * 1000, baseline: raw };
      log(`  ${JSON.stringify(results.ingest)}`);

      results.report = await reportBench(rpc, db, tenantId, reportRecords);
      log(`  ${JSON.stringify(results.report)}`);
    } finally {
      await db.end();
      await m.nc.close();
    }
  } finally {
    await stack.stop();
    await testing.cleanupEnv(env);
  }
  return results;
}

// Run on its own: `node bench/billing.mjs` prints the figures as JSON.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = await billingBenchmarks();
  console.log(JSON.stringify(r));
}
