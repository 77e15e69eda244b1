import 'reflect-metadata';
import { Inject, INestMicroservice, Injectable, Module } from '@nestjs/common';
import { lastValueFrom } from 'rxjs';
import { parseConfig } from '@keel/config';
import { EventEnvelope, KeelError, newEventId } from '@keel/contracts';
import { createLogger } from '@keel/observability';
import { cleanupEnv, eventually, isolatedEnv } from '@keel/testing';
import {
  closeMessaging,
  connectMessaging,
  createServiceApp,
  Ctx,
  Payload,
  durableName,
  EventPattern,
  eventsBucket,
  EventStore,
  KeelEventContext,
  KeelNatsClient,
  KeelNatsTransport,
  KeelRequestContext,
  KvLease,
  LEASE_TTL_MS,
  leasesBucket,
  MessagePattern,
  Messaging,
  MessagingModule,
  patternsOf,
  PermanentEventError,
  RpcClient,
} from '@keel/messaging';

const logger = createLogger('transport-test', (process.env.TRANSPORT_LOG as never) ?? 'silent');

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** What the handlers of every app instance saw, shared by the instances of this test. */
const seen = {
  requests: [] as { instance: string; n: number }[],
  events: [] as { instance: string; id: string; position: number; subject: string; attempt: number }[],
  flaky: [] as { id: string; attempt: number }[],
  /** Events whose handler waits for this before resolving. */
  gates: new Map<string, Promise<void>>(),
  /** How many times the flaky handler throws for an event before it succeeds. */
  failures: new Map<string, number>(),
  poison: [] as string[],
  injected: [] as string[],
};

/** A provider other providers inject: its handlers are served through patternsOf. */
@Injectable()
class Greeter {
  constructor(@Inject('INSTANCE') private readonly instance: string) {}
  @MessagePattern('qry.transport.greet')
  async greet(body: { name: string }): Promise<string> {
    return `hello ${body.name} from ${this.instance}`;
  }
}

@Injectable()
class UsesGreeter {
  constructor(readonly greeter: Greeter) {}
}

/** A handler class listed directly as a controller. */
@Injectable()
class Handlers {
  constructor(@Inject('INSTANCE') private readonly instance: string) {}

  @MessagePattern('qry.transport.echo')
  async echo(@Payload() body: { n: number }, @Ctx() ctx: KeelRequestContext) {
    seen.requests.push({ instance: this.instance, n: body.n });
    return { instance: this.instance, n: body.n, subject: ctx.getSubject(), traced: ctx.getHeaders()?.has('traceparent') ?? false };
  }

  @MessagePattern('cmd.transport.refuse')
  async refuse(): Promise<never> {
    throw new KeelError('slug_taken', 'The slug acme is taken.', [{ field: 'slug', message: 'taken', in: 'body' }]);
  }

  @MessagePattern('cmd.transport.crash')
  async crash(): Promise<never> {
    throw new Error('secret detail: postgres://user:pw@db');
  }

  @EventPattern('evt.*.transport.thing.>')
  async onThing(@Payload() event: EventEnvelope, @Ctx() ctx: KeelEventContext): Promise<void> {
    await seen.gates.get(event.id);
    seen.events.push({ instance: this.instance, id: event.id, position: ctx.getPosition(), subject: ctx.getSubject(), attempt: ctx.getAttempt() });
  }

  @EventPattern('evt.*.transport.flaky.>', { durable: 'transport-flaky' })
  async onFlaky(@Payload() event: EventEnvelope, @Ctx() ctx: KeelEventContext): Promise<void> {
    seen.flaky.push({ id: event.id, attempt: ctx.getAttempt() });
    const left = seen.failures.get(event.id) ?? 0;
    if (left > 0) {
      seen.failures.set(event.id, left - 1);
      throw new Error('a dependency is down');
    }
  }

  @EventPattern('evt.*.transport.poison.>')
  async onPoison(event: EventEnvelope): Promise<void> {
    if ((event.data as { poison?: boolean }).poison) throw new PermanentEventError('this event can never apply');
    seen.poison.push(event.id);
  }
}

/** Nest's microservices layer over the real NATS and JetStream, through createServiceApp. */
describe('KeelNatsTransport and KeelNatsClient', () => {
  const env = isolatedEnv('transport');
  const config = parseConfig({ ...env, KEEL_REQUEST_TIMEOUT_MS: '3000' });
  const apps: { app: INestMicroservice; transport: KeelNatsTransport }[] = [];
  let caller: Messaging;
  let rpc: RpcClient;
  let client: KeelNatsClient;
  let store: EventStore;

  function appModule(instance: string) {
    @Module({
      imports: [MessagingModule.forRoot({ config, logger, service: 'transport-test' })],
      providers: [{ provide: 'INSTANCE', useValue: instance }, Greeter, UsesGreeter],
      controllers: [Handlers, patternsOf(Greeter)],
    })
    class TransportTestModule {}
    return TransportTestModule;
  }

  function envelope(aggregateType: string, data: Record<string, unknown> = {}): EventEnvelope {
    return {
      id: newEventId(),
      type: `transport.${aggregateType}.happened`,
      schemaVersion: 1,
      tenantId: 'acme',
      aggregateType,
      aggregateId: newEventId(),
      aggregateVersion: 1,
      occurredAt: new Date().toISOString(),
      actor: { kind: 'system', id: 'transport-test' },
      correlationId: 'transport-test',
      data,
    };
  }

  async function append(e: EventEnvelope): Promise<number> {
    const [position] = await store.append([e], 0);
    return position!;
  }

  const durable = (name: string) => durableName(config.KEEL_SUBJECT_PREFIX, name);
  const thingConsumer = durable('transport-test-evt.any.transport.thing.all');

  beforeAll(async () => {
    apps.push(await createServiceApp(appModule('A'), logger));
    apps.push(await createServiceApp(appModule('B'), logger));
    caller = await connectMessaging(config, 'transport-caller');
    rpc = new RpcClient(caller);
    client = new KeelNatsClient({ messaging: caller });
    await client.connect();
    store = new EventStore(caller);
  });

  afterAll(async () => {
    for (const { app } of apps) await app.close().catch(() => undefined);
    await client.close();
    for (const bucket of [eventsBucket(caller), leasesBucket(caller)]) await caller.jsm.streams.delete(`KV_${bucket}`).catch(() => undefined);
    await closeMessaging(caller);
    await cleanupEnv(env);
  });

  it('answers @MessagePattern requests with the decoded body first and a context second', async () => {
    const answer = await rpc.request<{ instance: string; n: number; subject: string; traced: boolean }>('qry.transport.echo', { n: 7 });
    expect(answer).toMatchObject({ n: 7, subject: 'qry.transport.echo' });
    expect(['A', 'B']).toContain(answer.instance);
    // Raw on the wire: the RpcReply format under the deployment prefix.
    const raw = await caller.nc.request(`${config.KEEL_SUBJECT_PREFIX}qry.transport.echo`, new TextEncoder().encode('{"n":8}'));
    expect(JSON.parse(new TextDecoder().decode(raw.data))).toMatchObject({ ok: true, value: { n: 8 } });
  });

  it('answers a KeelError as itself and anything else as internal, without its detail', async () => {
    const refused = await rpc.request('cmd.transport.refuse', {}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KeelError);
    expect(refused).toMatchObject({ code: 'slug_taken', message: 'The slug acme is taken.', fields: [{ field: 'slug', message: 'taken', in: 'body' }] });
    const crashed = await rpc.request('cmd.transport.crash', {}).catch((e: unknown) => e);
    expect(crashed).toMatchObject({ code: 'internal' });
    expect(String((crashed as Error).message)).not.toContain('postgres://');
    const invalid = await caller.nc.request(`${config.KEEL_SUBJECT_PREFIX}cmd.transport.refuse`, new TextEncoder().encode('{not json'));
    expect(JSON.parse(new TextDecoder().decode(invalid.data))).toMatchObject({ ok: false, error: { code: 'validation_failed' } });
  });

  it('serves a provider that others inject through patternsOf, with one instance of it', async () => {
    expect(await rpc.request<string>('qry.transport.greet', { name: 'ada' })).toMatch(/^hello ada from [AB]$/);
    const [a] = apps;
    expect(a!.app.get(UsesGreeter).greeter).toBe(a!.app.get(Greeter));
  });

  it('shares a queue group between two app instances: each request is answered once', async () => {
    seen.requests.length = 0;
    const answers = await Promise.all(Array.from({ length: 60 }, (_, n) => rpc.request<{ instance: string; n: number }>('qry.transport.echo', { n })));
    const all = Array.from({ length: 60 }, (_, n) => n);
    expect(answers.map((a) => a.n)).toEqual(all);
    expect(seen.requests.map((r) => r.n).sort((x, y) => x - y)).toEqual(all);
    expect(new Set(seen.requests.map((r) => r.instance))).toEqual(new Set(['A', 'B']));
    for (const a of answers) expect(seen.requests.find((r) => r.n === a.n)!.instance).toBe(a.instance);
  });

  it('round-trips through KeelNatsClient: send answers, a refusal errors with its KeelError, emit appends', async () => {
    const answer = await lastValueFrom(client.send<{ n: number; subject: string }>('qry.transport.echo', { n: 42 }));
    expect(answer).toMatchObject({ n: 42, subject: 'qry.transport.echo' });
    const refused = await lastValueFrom(client.send('cmd.transport.refuse', {})).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KeelError);
    expect(refused).toMatchObject({ code: 'slug_taken' });
    const nobody = await lastValueFrom(client.send('qry.transport.nobody', {})).catch((e: unknown) => e);
    expect(nobody).toMatchObject({ code: 'service_unavailable' });

    const e = envelope('thing');
    const subject = store.subjectOf(e).slice(config.KEEL_SUBJECT_PREFIX.length);
    const position = await lastValueFrom(client.emit<number>(subject, e));
    expect(position).toBeGreaterThan(0);
    await expect(lastValueFrom(client.emit(`${subject}.elsewhere`, envelope('thing')))).rejects.toThrow(/belongs on/);
    const got = await eventually(async () => seen.events.filter((s) => s.id === e.id), (s) => s.length === 1, { what: 'the emitted event to be handled' });
    expect(got[0]).toMatchObject({ position, subject });
  });

  it('hands a published event to one replica once, and acks it only after the handler resolved', async () => {
    const held = envelope('thing');
    const gate = deferred();
    seen.gates.set(held.id, gate.promise);
    const position = await append(held);
    // Delivered, not acked, while the handler has not resolved.
    const pending = await eventually(
      () => caller.jsm.consumers.info(config.KEEL_STREAM, thingConsumer),
      (info) => info.delivered.stream_seq >= position,
      { what: 'the held event to be delivered' },
    );
    expect(pending.ack_floor.stream_seq).toBeLessThan(position);
    expect(seen.events.filter((s) => s.id === held.id)).toHaveLength(0);
    gate.resolve();
    await eventually(
      () => caller.jsm.consumers.info(config.KEEL_STREAM, thingConsumer),
      (info) => info.ack_floor.stream_seq >= position,
      { what: 'the event to be acked after its handler resolved' },
    );
    const after = envelope('thing');
    const next = await append(after);
    await eventually(async () => seen.events.filter((s) => s.id === after.id), (s) => s.length === 1, { what: 'the next event' });
    await eventually(
      () => caller.jsm.consumers.info(config.KEEL_STREAM, thingConsumer),
      (info) => info.ack_floor.stream_seq >= next && info.num_ack_pending === 0,
      { what: 'everything acked' },
    );
    // Once each, by one replica (the lease holder) only.
    expect(seen.events.filter((s) => s.id === held.id)).toEqual([{ instance: expect.any(String), id: held.id, position, subject: expect.stringMatching(/^evt\.acme\.transport\.thing\./), attempt: 1 }]);
    expect(new Set(seen.events.map((s) => s.instance)).size).toBe(1);
  });

  it('hands an event whose handler threw to it again, in order, until it resolves', async () => {
    const flaky = envelope('flaky');
    seen.failures.set(flaky.id, 2);
    await append(flaky);
    const later = envelope('flaky');
    const last = await append(later);
    await eventually(async () => seen.flaky.filter((s) => s.id === later.id), (s) => s.length === 1, { what: 'the event after the flaky one', timeoutMs: 30_000 });
    const attempts = seen.flaky.filter((s) => s.id === flaky.id);
    expect(attempts.length).toBeGreaterThanOrEqual(3);
    expect(attempts[attempts.length - 1]!.attempt).toBe(attempts.length);
    // The later event only after the flaky one finally resolved, and once.
    const order = seen.flaky.map((s) => s.id);
    expect(order.lastIndexOf(flaky.id)).toBeLessThan(order.indexOf(later.id));
    // Settled once resolved (the ack follows the handler: wait for it rather than race it).
    await eventually(
      () => caller.jsm.consumers.info(config.KEEL_STREAM, durable('transport-flaky')),
      (info) => info.ack_floor.stream_seq >= last && info.num_ack_pending === 0,
      { what: 'the flaky events to be acked' },
    );
  });

  it('dead-letters an event that can never apply, durably, and goes on with the next', async () => {
    const poison = envelope('poison', { poison: true });
    const position = await append(poison);
    const fine = envelope('poison');
    await append(fine);
    await eventually(async () => seen.poison, (s) => s.includes(fine.id), { what: 'the event after the poison one', timeoutMs: 30_000 });
    expect(seen.poison).not.toContain(poison.id);
    const kv = await caller.js.views.kv(eventsBucket(caller));
    const letter = await kv.get(`dead.${durable('transport-test-evt.any.transport.poison.all')}.${position}`);
    expect(letter).not.toBeNull();
    expect(JSON.parse(new TextDecoder().decode(letter!.value))).toMatchObject({ position, reason: 'this event can never apply' });
    const holder = apps.flatMap(({ transport }) => transport.eventConsumers()).find((c) => c.health().name.endsWith('transport_poison_all') && c.health().leader);
    expect(holder?.health()).toMatchObject({ healthy: false, deadLetters: 1 });
  });

  it('passes a lease whose holder is gone (its connection lost, nothing released) to another replica within the TTL', async () => {
    const bucket = leasesBucket(caller);
    const gone = await connectMessaging(config, 'transport-lease-gone');
    const a = new KvLease(() => gone.js.views.kv(bucket, { history: 1, ttl: LEASE_TTL_MS }), 'lease-test', logger);
    const b = new KvLease(() => caller.js.views.kv(bucket, { history: 1, ttl: LEASE_TTL_MS }), 'lease-test', logger);
    await a.acquire();
    expect(await a.stillHeld()).toBe(true);
    const kv = await caller.js.views.kv(bucket, { history: 1, ttl: LEASE_TTL_MS });
    const created = (await kv.get('lease-test'))!.revision;
    let bHolds = false;
    const bAcquired = b.acquire().then(() => (bHolds = true));
    // While the holder renews, nobody else gets it.
    await eventually(() => kv.get('lease-test'), (e) => (e?.revision ?? 0) > created, { what: 'a renewal of the lease' });
    expect(bHolds).toBe(false);
    const closedAt = Date.now();
    await gone.nc.close();
    await bAcquired;
    expect(Date.now() - closedAt).toBeLessThan(LEASE_TTL_MS + 5_000);
    expect(await b.stillHeld()).toBe(true);
    await eventually(() => a.stillHeld(), (held) => !held, { what: 'the old holder to know it lost the lease', timeoutMs: LEASE_TTL_MS + 5_000 });
    await b.release();
    await a.release();
  });

  it('closes with the application: the other instance answers everything, and takes over the event consumers', async () => {
    const leader = apps.find(({ transport }) => transport.eventConsumers().some((c) => c.health().leader && c.health().name === thingConsumer))!;
    const other = apps.find((a) => a !== leader)!;
    const otherName = other === apps[0] ? 'A' : 'B';
    await leader.app.close();
    apps.splice(apps.indexOf(leader), 1);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, n) => rpc.request<{ instance: string }>('qry.transport.echo', { n })));
    expect(new Set(answers.map((a) => a.instance))).toEqual(new Set([otherName]));
    const e = envelope('thing');
    await append(e);
    const got = await eventually(async () => seen.events.filter((s) => s.id === e.id), (s) => s.length === 1, { what: 'the other instance to take the events over', timeoutMs: 30_000 });
    expect(got[0]!.instance).toBe(otherName);
    // It resumed at the durable position of the consumer: nothing handled before came again.
    const ids = seen.events.map((s) => s.id);
    expect(ids.length).toBeGreaterThanOrEqual(4);
    expect(new Set(ids).size).toBe(ids.length);
  });
});
