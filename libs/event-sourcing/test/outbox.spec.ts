import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { DataSource, EntityManager, MigrationInterface, QueryRunner } from 'typeorm';
import { KeelConfig, parseConfig, serviceDatabaseUrl } from '@keel/config';
import { CommandMeta, EventEnvelope, KeelError } from '@keel/contracts';
import { ALL_TENANTS, inTenant, openDataSource, provisionServiceSchema, tenantPolicySql } from '@keel/database';
import { closeMessaging, connectMessaging, ensureEventStream, EventStore, Messaging } from '@keel/messaging';
import { cleanupEnv, eventually, freePort, isolatedEnv } from '@keel/testing';
import { Outbox, OutboxEvent, outboxTablesSql } from '@keel/event-sourcing';

const SCHEMA = 'shop';
const ROLE = 'keel_shop_outbox_test';

class CreateShop1700000000100 implements MigrationInterface {
  name = 'CreateShop1700000000100';
  async up(q: QueryRunner): Promise<void> {
    await q.query(`CREATE TABLE "${SCHEMA}".carts (id text PRIMARY KEY, tenant_id text NOT NULL, items integer NOT NULL, version integer NOT NULL)`);
    for (const sql of tenantPolicySql(SCHEMA, 'carts')) await q.query(sql);
    await q.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON "${SCHEMA}".carts TO ${ROLE}`);
    for (const sql of outboxTablesSql(SCHEMA, ROLE)) await q.query(sql);
  }
  async down(): Promise<void> {}
}

/** A NATS server of this test's own, so it can be stopped without disturbing anything else. */
class OwnNats {
  private proc?: ChildProcess;
  readonly dir = mkdtempSync(join(tmpdir(), 'keel-outbox-nats-'));
  constructor(readonly port: number) {}
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }
  async start(): Promise<void> {
    this.proc = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.dir], { stdio: 'ignore' });
    const { connect } = await import('nats');
    await eventually(
      async () => {
        const nc = await connect({ servers: this.url, reconnect: false, timeout: 500 });
        await nc.jetstreamManager();
        await nc.close();
        return true;
      },
      (ok) => ok,
      { timeoutMs: 15_000, intervalMs: 100, what: 'the test NATS server' },
    );
  }
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const meta: CommandMeta = { actor: { kind: 'user', id: 'u-1', tenantId: 't1' }, correlationId: 'outbox-test' };

/** The transactional outbox against the real PostgreSQL and NATS JetStream. */
describe('Outbox', () => {
  const env = isolatedEnv('outbox');
  const config: KeelConfig = parseConfig(env);
  let admin: Client;
  let writeDs: DataSource;
  let relayDs: DataSource;
  let m: Messaging;
  let store: EventStore;
  const outboxes: Outbox[] = [];
  const outbox = (o: Partial<ConstructorParameters<typeof Outbox>[0]> = {}) => {
    const x = new Outbox({ relayDs, messaging: m, schema: SCHEMA, pollMs: 5_000, leadershipPollMs: 100, waitMs: 10_000, ...o });
    outboxes.push(x);
    return x;
  };
  let n = 0;
  const cartId = () => `cart-${Date.now().toString(36)}-${n++}`;

  /** One command: a cart row changes (its version goes up) and its event is added, in one transaction. */
  async function addItems(box: Outbox, tenantId: string, id: string, items: number, options: { fail?: boolean; meta?: CommandMeta } = {}) {
    return inTenant(writeDs, tenantId, async (tx: EntityManager) => {
      const [row] = await tx.query(
        `INSERT INTO "${SCHEMA}".carts AS c (id, tenant_id, items, version) VALUES ($1, $2, $3, 1)
         ON CONFLICT (id) DO UPDATE SET items = c.items + EXCLUDED.items, version = c.version + 1 RETURNING version`,
        [id, tenantId, items],
      );
      const event: OutboxEvent = { tenantId, aggregateType: 'cart', aggregateId: id, version: row.version, type: 'shop.cart.items_added', data: { items } };
      const receipt = await box.record(tx, [event], options.meta ?? meta);
      if (options.fail) throw new KeelError('conflict', 'the command fails after writing');
      return receipt;
    });
  }

  const subjectOf = (tenantId: string, id: string) => `${config.KEEL_SUBJECT_PREFIX}evt.${tenantId}.shop.cart.${id}`;
  const onStream = (tenantId: string, id: string) => store.readSubject(subjectOf(tenantId, id));
  const unsent = async () => Number((await admin.query(`SELECT count(*) AS n FROM "${SCHEMA}".outbox WHERE sent_at IS NULL`)).rows[0].n);

  beforeAll(async () => {
    await provisionServiceSchema(env.DATABASE_URL!, { schema: SCHEMA, role: ROLE, password: config.KEEL_DB_PASSWORD, migrations: [CreateShop1700000000100] });
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    const url = serviceDatabaseUrl(config, ROLE);
    writeDs = await openDataSource({ url, schema: SCHEMA, applicationName: 'outbox-test-write' });
    relayDs = await openDataSource({ url, schema: SCHEMA, applicationName: 'outbox-test-relay', poolSize: 6, scope: ALL_TENANTS });
    m = await connectMessaging(config, 'outbox-test');
    await ensureEventStream(m.jsm, { stream: config.KEEL_STREAM, prefix: config.KEEL_SUBJECT_PREFIX, replicas: 1 });
    store = new EventStore(m);
  });

  afterAll(async () => {
    for (const x of outboxes) await x.stop();
    await closeMessaging(m);
    await writeDs?.destroy();
    await relayDs?.destroy();
    await admin?.end();
    await cleanupEnv(env);
  });

  afterEach(async () => {
    for (const x of outboxes.splice(0)) await x.stop();
  });

  it('commits the row and its entry together; the command answers once the event is on the stream, with its position', async () => {
    const relay = outbox();
    await relay.start();
    await eventually(async () => relay.isLeader, (v) => v, { what: 'the relay to lead' });
    const id = cartId();

    const receipt = await addItems(relay, 't1', id, 2);
    const { position, positions } = await relay.sent(receipt);

    expect(positions).toEqual([position]);
    const stored = await store.readPosition(position);
    expect(stored?.event).toEqual(receipt.envelopes[0]);
    expect(stored?.headers?.get('Nats-Msg-Id')).toBe(receipt.eventIds[0]);
    await eventually(unsent, (left) => left === 0, { what: 'the entry to be marked sent' });
    expect(receipt.envelopes[0]).toMatchObject({ tenantId: 't1', aggregateType: 'cart', aggregateId: id, aggregateVersion: 1, actor: meta.actor, data: { items: 2 } });
    const [row] = (await admin.query(`SELECT position, sent_at FROM "${SCHEMA}".outbox WHERE event_id = $1`, [receipt.eventIds[0]])).rows;
    expect(Number(row.position)).toBe(position);
    expect(row.sent_at).not.toBeNull();
    expect((await admin.query(`SELECT items, version FROM "${SCHEMA}".carts WHERE id = $1`, [id])).rows).toEqual([{ items: 2, version: 1 }]);
  });

  it('publishes nothing of a transaction that rolls back', async () => {
    const relay = outbox();
    await relay.start();
    const id = cartId();

    await expect(addItems(relay, 't1', id, 5, { fail: true })).rejects.toMatchObject({ code: 'conflict' });
    // A later commit on another aggregate goes through: the relay has run past the failed one.
    const later = cartId();
    await relay.sent(await addItems(relay, 't1', later, 1));

    expect(await onStream('t1', id)).toEqual([]);
    expect((await onStream('t1', later)).map((p) => p.event.aggregateVersion)).toEqual([1]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${SCHEMA}".carts WHERE id = $1`, [id])).rows[0].n).toBe(0);
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${SCHEMA}".outbox WHERE envelope::text LIKE $1`, [`%"${id}"%`])).rows[0].n).toBe(0);
  });

  it('loses nothing committed while no relay runs (a crash after the commit): the next relay publishes each entry once, in order', async () => {
    // A writer whose relay is not running, as after a SIGKILL right after the commit.
    const writer = outbox();
    const id = cartId();
    const receipts = [];
    for (let i = 0; i < 5; i++) receipts.push(await addItems(writer, 't2', id, 1));
    expect(await onStream('t2', id)).toEqual([]);
    expect(await unsent()).toBe(5);

    const relay = outbox();
    await relay.start();
    const sent = await relay.sent({ entryIds: receipts.flatMap((r) => r.entryIds) });

    const events = await onStream('t2', id);
    expect(events.map((p) => p.event.id)).toEqual(receipts.map((r) => r.eventIds[0]));
    expect(events.map((p) => p.event.aggregateVersion)).toEqual([1, 2, 3, 4, 5]);
    expect(events.map((p) => p.position)).toEqual(sent.positions);
    await eventually(unsent, (left) => left === 0, { what: 'every entry to be marked sent' });
  });

  it('does not duplicate an entry published again after its "sent" mark was lost', async () => {
    const relay = outbox();
    await relay.start();
    const id = cartId();
    const first = await relay.sent(await addItems(relay, 't1', id, 1));
    const second = await relay.sent(await addItems(relay, 't1', id, 1));
    await relay.stop();
    const before = (await m.jsm.streams.info(config.KEEL_STREAM)).state.messages;
    // The relay published, then died before it recorded that: both entries are unsent again.
    await admin.query(`UPDATE "${SCHEMA}".outbox SET sent_at = NULL, position = NULL WHERE position = ANY($1::bigint[])`, [[first.position, second.position]]);

    const again = outbox();
    await again.start();
    await eventually(unsent, (left) => left === 0, { what: 'the entries to be sent again' });

    expect((await m.jsm.streams.info(config.KEEL_STREAM)).state.messages).toBe(before);
    const positions = (await admin.query(`SELECT position FROM "${SCHEMA}".outbox WHERE position = ANY($1::bigint[]) ORDER BY seq`, [[first.position, second.position]])).rows;
    expect(positions.map((r) => Number(r.position))).toEqual([first.position, second.position]);
    expect((await onStream('t1', id)).map((p) => p.event.aggregateVersion)).toEqual([1, 2]);
  });

  it('keeps outbox order on the stream and consecutive versions per aggregate under concurrent commands', async () => {
    const relay = outbox({ batchSize: 16 });
    await relay.start();
    const ids = [cartId(), cartId(), cartId()];
    const receipts = await Promise.all(Array.from({ length: 60 }, (_, i) => addItems(relay, 't3', ids[i % 3]!, 1)));
    await Promise.all(receipts.map((r) => relay.sent(r)));
    // Writers are answered on the stream's acknowledgement; the relay records the positions just after.
    await eventually(unsent, (left) => left === 0, { what: 'the entries to be marked sent' });

    const rows = (await admin.query(`SELECT seq, position FROM "${SCHEMA}".outbox WHERE tenant_id = 't3' ORDER BY seq`)).rows.map((r) => Number(r.position));
    expect(rows).toHaveLength(60);
    expect([...rows].sort((a, b) => a - b)).toEqual(rows);
    for (const id of ids) {
      expect((await onStream('t3', id)).map((p) => p.event.aggregateVersion)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    }
  });

  it('runs one active relay across replicas; a writer on a standby is answered once the leader has sent its entry', async () => {
    const a = outbox();
    const b = outbox();
    await a.start();
    await b.start();
    const leader = await eventually(async () => [a, b].filter((x) => x.isLeader), (l) => l.length === 1, { what: 'one leader' });
    const standby = leader[0] === a ? b : a;
    expect(standby.isLeader).toBe(false);
    expect(standby.health()).toMatchObject({ running: true, leader: false, healthy: true });

    // The standby's writer: woken by NOTIFY on commit (the leader's poll is 5 s), answered through NOTIFY on send.
    const started = Date.now();
    const { position } = await standby.sent(await addItems(standby, 't1', cartId(), 1));
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(position).toBeGreaterThan(0);

    await leader[0]!.stop();
    await eventually(async () => standby.isLeader, (v) => v, { what: 'the standby to take over' });
    const id = cartId();
    await standby.sent(await addItems(standby, 't1', id, 1));
    expect((await onStream('t1', id)).map((p) => p.event.aggregateVersion)).toEqual([1]);
  });

  it('records a retried command (same command id) once', async () => {
    const relay = outbox();
    await relay.start();
    const id = cartId();
    const retried = { ...meta, commandId: `cmd-${id}` } as CommandMeta;
    const first = await addItems(relay, 't1', id, 1, { meta: retried });
    await expect(addItems(relay, 't1', id, 1, { meta: retried })).rejects.toMatchObject({ code: 'conflict' });
    await relay.sent(first);

    expect((await onStream('t1', id)).map((p) => p.event.id)).toEqual(first.eventIds);
    expect((await admin.query(`SELECT items FROM "${SCHEMA}".carts WHERE id = $1`, [id])).rows).toEqual([{ items: 1 }]);
  });

  it('publishes a decision of several events of one aggregate as one message: every reader gets all of them or none, at one position', async () => {
    const relay = outbox();
    await relay.start();
    const id = cartId();
    const events: OutboxEvent[] = [1, 2, 3].map((version) => ({ tenantId: 't1', aggregateType: 'cart', aggregateId: id, version, type: 'shop.cart.items_added', data: { items: version } }));
    const receipt = await inTenant(writeDs, 't1', async (tx: EntityManager) => {
      await tx.query(`INSERT INTO "${SCHEMA}".carts (id, tenant_id, items, version) VALUES ($1, 't1', 6, 3)`, [id]);
      return relay.record(tx, events, meta);
    });
    expect(receipt.eventIds).toHaveLength(3);
    expect(receipt.entryIds).toEqual([receipt.eventIds[0]]);
    const { position, positions } = await relay.sent(receipt);

    expect(positions).toEqual([position]);
    const stored = await store.readPosition(position);
    expect(stored?.events).toEqual(receipt.envelopes);
    expect(stored?.headers?.get('Nats-Msg-Id')).toBe(receipt.eventIds[0]);
    // Read by its aggregate's subject: all three, in order, at the one position.
    expect((await onStream('t1', id)).map((p) => [p.position, p.event.aggregateVersion])).toEqual([
      [position, 1],
      [position, 2],
      [position, 3],
    ]);
  });

  it('publishes a decision over several aggregates as one message per aggregate, in order, each on its own subject', async () => {
    const relay = outbox();
    await relay.start();
    const [a, b] = [cartId(), cartId()];
    const events: OutboxEvent[] = [
      { tenantId: 't1', aggregateType: 'cart', aggregateId: a, version: 1, type: 'shop.cart.emptied', data: {} },
      { tenantId: 't1', aggregateType: 'cart', aggregateId: a, version: 2, type: 'shop.cart.items_added', data: { items: 1 } },
      { tenantId: 't1', aggregateType: 'cart', aggregateId: b, version: 1, type: 'shop.cart.emptied', data: {} },
    ];
    const receipt = await inTenant(writeDs, 't1', (tx: EntityManager) => relay.record(tx, events, meta));
    expect(receipt.entryIds).toEqual([receipt.eventIds[0], receipt.eventIds[2]]);
    const { positions } = await relay.sent(receipt);

    expect(positions[1]).toBeGreaterThan(positions[0]!);
    expect((await onStream('t1', a)).map((p) => [p.position, p.event.aggregateVersion])).toEqual([
      [positions[0], 1],
      [positions[0], 2],
    ]);
    expect((await onStream('t1', b)).map((p) => [p.position, p.event.type])).toEqual([[positions[1], 'shop.cart.emptied']]);
  });

  it('refuses an envelope that does not validate, writing nothing', async () => {
    const relay = outbox();
    const id = cartId();
    const bad = { id: 'not-a-uuid', type: 'shop.cart.items_added' } as unknown as EventEnvelope;
    await expect(inTenant(writeDs, 't1', (tx) => relay.add(tx, [bad]))).rejects.toMatchObject({ code: 'validation_failed' });
    expect(await onStream('t1', id)).toEqual([]);
  });

  it('answers service_unavailable while NATS is unreachable, keeps the entries, and publishes each once when it is back', async () => {
    const nats = new OwnNats(await freePort());
    await nats.start();
    const own = await connectMessaging({ ...config, NATS_URL: nats.url, KEEL_REQUEST_TIMEOUT_MS: 1_000 }, 'outbox-test-own-nats');
    try {
      await ensureEventStream(own.jsm, { stream: config.KEEL_STREAM, prefix: config.KEEL_SUBJECT_PREFIX, replicas: 1 });
      const ownStore = new EventStore(own);
      const relay = outbox({ messaging: own, pollMs: 200 });
      await relay.start();
      const id = cartId();
      await relay.sent(await addItems(relay, 't4', id, 1));

      await nats.stop();
      const during = [await addItems(relay, 't4', id, 1), await addItems(relay, 't4', id, 1)];
      await expect(relay.sent(during[0]!, 1_500)).rejects.toMatchObject({ code: 'service_unavailable' });
      expect(await unsent()).toBe(2);
      await eventually(async () => relay.health(), (h) => h.lastError !== null, { what: 'the relay to notice' });
      // While it retries the publishes, the relay holds no transaction open (nor any row lock).
      const inTransaction = await admin.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'outbox-test-relay' AND state LIKE 'idle in transaction%'`,
      );
      expect(inTransaction.rows[0].n).toBe(0);
      expect(relay.health()).toMatchObject({ leader: true, running: true });

      await nats.start();
      await relay.sent({ entryIds: during.flatMap((r) => r.entryIds) }, 30_000);
      const events = await ownStore.readSubject(`${config.KEEL_SUBJECT_PREFIX}evt.t4.shop.cart.${id}`);
      expect(events.map((p) => p.event.aggregateVersion)).toEqual([1, 2, 3]);
      await eventually(unsent, (left) => left === 0, { what: 'every entry to be marked sent' });
    } finally {
      for (const x of outboxes.splice(0)) await x.stop();
      await closeMessaging(own);
      await nats.stop();
      nats.remove();
    }
  });
});
