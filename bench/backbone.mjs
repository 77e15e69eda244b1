// The backbone's own figures, each against a baseline taken in the same run, on a namespace of its
// own (stream, database, subject prefix) with the real audit and tenant services:
// - ledger.append: a backlog already on the stream → committed ledger rows, vs batched multi-row
//   INSERTs of the same rows into a plain table (what Postgres alone does with them);
// - facts.append: facts through the fact path (pipelined publishes) until they are in the ledger,
//   vs raw pipelined JetStream publishes of the same messages into a scratch stream;
// - projection.rebuild: the tenant read model rebuilt from the ledger (events replayed per second);
// - ledger.verify: the whole chain verified, vs a scan of the same rows with one SHA-256 each;
// - personal_data.seal: facts carrying personal data through the fact path into the ledger, sealed
//   (crypto-shredding) vs in clear, in alternating rounds.
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const req = createRequire(join(root, 'package.json'));
const dist = (lib) => req(join(root, 'libs', lib, 'dist', 'index.js'));
const fromLib = (lib) => createRequire(join(root, 'libs', lib, 'package.json'));
const { Client } = fromLib('database')('pg');
const { connect } = fromLib('messaging')('nats');
const log = (...a) => console.error(...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function envelope(i, run, type = 'bench.usage.recorded', aggregateType = 'usage', data = { n: i, model: 'gpt-x', inputTokens: 1200 + i, outputTokens: 300 }) {
  return {
    id: dist('contracts').newEventId(),
    type,
    schemaVersion: 1,
    tenantId: `t${i % 50}`,
    aggregateType,
    aggregateId: `${run}-${i}`,
    aggregateVersion: 1,
    occurredAt: new Date().toISOString(),
    actor: { kind: 'service', id: 'bench' },
    correlationId: `bench-${run}`,
    data,
  };
}

async function ledgerCount(db) {
  return Number((await db.query('SELECT coalesce(max(seq), 0)::bigint AS n FROM audit.ledger')).rows[0].n);
}

/** Polls until the ledger holds `target`; returns when it first moved and when it got there. */
async function watchLedger(db, from, target, timeoutMs = 300_000) {
  let first;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = await ledgerCount(db);
    const now = performance.now();
    if (first === undefined && n > from) first = { t: now, n };
    if (n >= target) return { first: first ?? { t: now, n }, last: now };
    if (Date.now() > deadline) throw new Error(`the ledger reached ${n} of ${target} in ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** What Postgres alone does with the ledger's rows: multi-row INSERTs of 500, one transaction each. */
async function insertBaseline(db, rows) {
  await db.query(`CREATE TEMP TABLE bench_ledger (LIKE audit.ledger INCLUDING DEFAULTS)`);
  const start = performance.now();
  for (let i = 0; i < rows.length; i += 500) {
    const batch = rows.slice(i, i + 500);
    const params = [];
    const tuples = batch.map((r, j) => {
      const b = j * 16;
      params.push(r.seq + 1e9, r.event_id, r.tenant_id, r.type, r.context, r.aggregate_type, r.aggregate_id, r.aggregate_version, r.actor_kind, r.actor_id, r.occurred_at, JSON.stringify(r.envelope), null, null, r.prev_hash, r.hash);
      return `(${Array.from({ length: 16 }, (_, k) => `$${b + k + 1}`).join(', ')})`;
    });
    await db.query('BEGIN');
    await db.query(
      `INSERT INTO bench_ledger (seq, event_id, tenant_id, type, context, aggregate_type, aggregate_id, aggregate_version, actor_kind, actor_id, occurred_at, envelope, payload, problem, prev_hash, hash) VALUES ${tuples.join(', ')}`,
      params,
    );
    await db.query('COMMIT');
  }
  const perSecond = rows.length / ((performance.now() - start) / 1000);
  await db.query('DROP TABLE bench_ledger');
  return perSecond;
}

/** Raw pipelined JetStream publishes of `messages` ({ id, data }) into a scratch stream, 1,024 in flight (also billing's baseline). */
export async function rawPublishBaseline(natsUrl, messages) {
  const nc = await connect({ servers: natsUrl });
  const jsm = await nc.jetstreamManager();
  const js = nc.jetstream();
  const name = `BENCH_${randomBytes(3).toString('hex').toUpperCase()}`;
  await jsm.streams.add({ name, subjects: [`${name.toLowerCase()}.>`], storage: 'file', duplicate_window: 120e9 });
  try {
    let next = 0;
    const start = performance.now();
    const lane = async () => {
      while (next < messages.length) {
        const i = next++;
        await js.publish(`${name.toLowerCase()}.evt.${i % 50}`, messages[i].data, { msgID: messages[i].id });
      }
    };
    await Promise.all(Array.from({ length: 1024 }, lane));
    return messages.length / ((performance.now() - start) / 1000);
  } finally {
    await jsm.streams.delete(name);
    await nc.close();
  }
}

async function verifyBaseline(db) {
  const start = performance.now();
  let n = 0;
  let after = 0;
  let prev = '0'.repeat(64);
  for (;;) {
    const { rows } = await db.query('SELECT seq, envelope::text AS text FROM audit.ledger WHERE seq > $1 ORDER BY seq LIMIT 5000', [after]);
    if (!rows.length) break;
    for (const r of rows) prev = createHash('sha256').update(prev).update(r.text).digest('hex');
    n += rows.length;
    after = Number(rows[rows.length - 1].seq);
  }
  return n / ((performance.now() - start) / 1000);
}

export async function backboneBenchmarks({ events = Number(process.env.BENCH_EVENTS ?? 20_000) } = {}) {
  const testing = dist('testing');
  const { parseConfig } = dist('config');
  const messaging = dist('messaging');
  process.env.KEEL_TEST_RUN ??= `bench${randomBytes(2).toString('hex')}`;
  const env = testing.isolatedEnv('backbone');
  const stack = new testing.Stack(env, { KEEL_LOG_LEVEL: 'warn' });
  const run = randomBytes(3).toString('hex');
  const results = {};
  try {
    // The stream and the audit schema first; then the backlog, with no ledger writer running.
    await stack.start('audit');
    const m = await messaging.connectMessaging(parseConfig(env), 'bench-backbone');
    const store = new messaging.EventStore(m);
    const db = new Client({ connectionString: env.DATABASE_URL });
    await db.connect();
    try {
      const base = await ledgerCount(db);
      await stack.kill('audit', 'SIGTERM');

      log(`ledger.append: ${events} events on the stream, then the ledger writer starts…`);
      const backlog = Array.from({ length: events }, (_, i) => envelope(i, run));
      const positions = await store.appendFacts(backlog, 1024);
      const target = Math.max(...positions);
      const restart = stack.startOne('audit');
      const seen = await watchLedger(db, base, target);
      await restart;
      const appended = target - seen.first.n;
      const ledgerRate = appended / ((seen.last - seen.first.t) / 1000);
      const { rows: sample } = await db.query('SELECT * FROM audit.ledger WHERE seq > $1 ORDER BY seq LIMIT $2', [base, Math.min(events, 20_000)]);
      const insertRate = await insertBaseline(db, sample);
      results.ledgerAppend = { perSecond: ledgerRate, baseline: insertRate, events: appended };
      log(`  ${JSON.stringify(results.ledgerAppend)}`);

      log(`facts.append: ${events} facts through the fact path into the ledger…`);
      const facts = Array.from({ length: events }, (_, i) => envelope(i, `${run}f`));
      const before = await ledgerCount(db);
      const start = performance.now();
      const factPositions = await store.appendFacts(facts, 1024);
      const appendedAt = performance.now();
      await watchLedger(db, before, Math.max(...factPositions));
      const factsRate = events / ((performance.now() - start) / 1000);
      const encoder = new TextEncoder();
      const rawRate = await rawPublishBaseline(env.NATS_URL, facts.map((f) => ({ id: `raw-${f.id}`, data: encoder.encode(JSON.stringify(f)) })));
      results.factsAppend = { perSecond: factsRate, publishOnly: events / ((appendedAt - start) / 1000), baseline: rawRate };
      log(`  ${JSON.stringify(results.factsAppend)}`);

      log(`projection.rebuild: the tenant read model over ${events} tenant creations…`);
      await stack.startOne('tenant');
      const created = Array.from({ length: events }, (_, i) => {
        const id = dist('contracts').newEventId();
        return {
          ...envelope(i, `${run}t`, 'tenant.tenant.created', 'tenant', {
            slug: `bench-${run}-${i}`, name: `Bench ${i}`, plan: 'starter',
            quotas: { maxUsers: 25, maxGpus: 0, maxGpuMemoryGb: 0, monthlyTokenQuota: 5_000_000, requestsPerMinute: 600 },
            settings: dist('contracts').DEFAULT_TENANT_SETTINGS,
          }),
          tenantId: id,
          aggregateId: id,
        };
      });
      const tenantPositions = await store.appendFacts(created, 1024);
      await watchLedger(db, 0, Math.max(...tenantPositions));
      const rpc = new messaging.RpcClient(m);
      // Twice: the first rebuild in a process is also the compilation of its code (reported as
      // `firstInProcess`); the second is the figure, as a rebuild of a long ledger runs warm.
      const rebuild = async () => {
        const rebuildStart = performance.now();
        const rebuilt = await rpc.request('cmd.tenant.rebuild_projection', { meta: { actor: { kind: 'service', id: 'bench' }, correlationId: 'bench' }, payload: { projection: 'tenants' } }, 600_000);
        return { perSecond: rebuilt.replayed / ((performance.now() - rebuildStart) / 1000), replayed: rebuilt.replayed };
      };
      const first = await rebuild();
      const warm = await rebuild();
      results.projectionRebuild = { ...warm, firstInProcess: first.perSecond };
      log(`  ${JSON.stringify(results.projectionRebuild)}`);

      log('ledger.verify: the whole chain, vs a scan with one SHA-256 per entry…');
      const verifyStart = performance.now();
      const verified = await rpc.request('qry.audit.verify', {}, 600_000);
      if (!verified.ok) throw new Error(`the ledger did not verify: ${JSON.stringify(verified)}`);
      const verifyRate = verified.checked / ((performance.now() - verifyStart) / 1000);
      const scanRate = await verifyBaseline(db);
      results.ledgerVerify = { perSecond: verifyRate, baseline: scanRate, checked: verified.checked };

      // Sealing personal data on the write path: the same facts (a person's address and user agent in
      // each actor) through the fact path into the ledger, sealed and in clear, in alternating rounds.
      // The data keys come from a source in memory here (in Keel, from the auth service once per
      // person, then from the same cache), so what is measured is the sealing itself.
      const sealN = Math.min(events, 10_000);
      log(`personal_data.seal: ${sealN} facts with personal data, sealed vs in clear, alternating rounds…`);
      const dek = randomBytes(32);
      const sealer = new messaging.PersonalData({ keys: async (refs) => ({ keys: refs.map(() => dek) }) });
      const personal = (tag) =>
        Array.from({ length: sealN }, (_, i) => ({
          ...envelope(i, `${run}${tag}`),
          actor: { kind: 'user', id: `user-${i % 500}`, tenantId: `t${i % 50}`, ip: `203.0.113.${i % 250}`, userAgent: 'Mozilla/5.0 (X11; Linux x86_64) keel-bench/1.0' },
        }));
      // In clear: what the fact path did before sealing (a process without sealing refuses personal data now).
      const inClear = { seal: async (events) => events, open: async (events) => events, openPositioned: async (events) => events };
      const round = async (tag, sealed) => {
        m.personalData = sealed ? sealer : inClear;
        const batch = personal(tag);
        const from = await ledgerCount(db);
        const t0 = performance.now();
        const at = await store.appendFacts(batch, 1024);
        await watchLedger(db, from, Math.max(...at));
        return sealN / ((performance.now() - t0) / 1000);
      };
      const sealRounds = [];
      for (let r = 0; r < 3; r++) sealRounds.push({ clear: await round(`c${r}`, false), sealed: await round(`s${r}`, true) });
      m.personalData = undefined;
      const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
      results.personalDataSeal = {
        perSecond: median(sealRounds.map((x) => x.sealed)),
        baseline: median(sealRounds.map((x) => x.clear)),
        ratio: median(sealRounds.map((x) => x.sealed / x.clear)),
        facts: sealN,
      };
      log(`  ${JSON.stringify(results.personalDataSeal)}`);
    } finally {
      await db.end();
      await messaging.closeMessaging(m);
    }
  } finally {
    await stack.stop();
    await testing.cleanupEnv(env);
  }
  return results;
}

// Run alone: `node bench/backbone.mjs`.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = await backboneBenchmarks();
  console.log(JSON.stringify(r));
}
