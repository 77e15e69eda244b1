import { connect, NatsConnection } from 'nats';
import { coalesceNatsWrites } from '@keel/messaging';
import { eventually } from '@keel/testing';

type Counted = { _write: (...a: unknown[]) => unknown; _writev?: (...a: unknown[]) => unknown };

/** Counts the system-call-level writes (Writable's _write and _writev) of a connection's socket. */
function countWrites(nc: NatsConnection): { calls: () => number } {
  const socket = (nc as unknown as { protocol: { transport: { socket: Counted } } }).protocol.transport.socket;
  let calls = 0;
  const write = socket._write.bind(socket);
  socket._write = (...a: unknown[]) => {
    calls++;
    return write(...a);
  };
  const writev = socket._writev?.bind(socket);
  if (writev) {
    socket._writev = (...a: unknown[]) => {
      calls++;
      return writev(...a);
    };
  }
  return { calls: () => calls };
}

/** Ten publishes, each after the previous microtask flush: as replies finishing in separate callbacks are. */
async function publishInTurn(nc: NatsConnection, subject: string): Promise<void> {
  for (let i = 0; i < 10; i++) {
    nc.publish(subject, new TextEncoder().encode(String(i)));
    // Lets nats.js's per-microtask flush run before the next publish.
    await new Promise<void>((r) => queueMicrotask(r));
    await Promise.resolve();
  }
}

describe('coalesced NATS writes', () => {
  const url = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';
  const subject = `keel.test.coalesce.${process.pid}.${Date.now()}`;

  it("send every frame of one event-loop turn in one socket write, all delivered in order (without it, one write each)", async () => {
    const listener = await connect({ servers: url });
    const got: string[] = [];
    const sub = listener.subscribe(subject, { callback: (_e, m) => got.push(new TextDecoder().decode(m.data)) });
    await listener.flush();

    const plain = await connect({ servers: url });
    const plainWrites = countWrites(plain);
    await publishInTurn(plain, subject);
    await plain.flush();
    const plainCount = plainWrites.calls();

    coalesceNatsWrites();
    const coalesced = await connect({ servers: url });
    const coalescedWrites = countWrites(coalesced);
    await publishInTurn(coalesced, subject);
    await new Promise((r) => setImmediate(r));
    const coalescedCount = coalescedWrites.calls();
    await coalesced.flush();

    // The plain connection wrote each publish on its own (plus the flush's PING).
    expect(plainCount).toBeGreaterThanOrEqual(10);
    expect(coalescedCount).toBe(1);
    await listener.flush();
    const expected = [...Array(10).keys()].map(String);
    await eventually(async () => got.length, (n) => n >= 20, { what: 'both rounds of publishes to arrive' });
    expect(got).toEqual([...expected, ...expected]);

    sub.unsubscribe();
    for (const nc of [plain, coalesced, listener]) await nc.close();
  });

  it('sends what was written in the turn a connection closes in (nats.js closes with destroy(), which would drop corked frames)', async () => {
    coalesceNatsWrites();
    const closing = `${subject}.closing`;
    const listener = await connect({ servers: url });
    const got: string[] = [];
    const sub = listener.subscribe(closing, { callback: (_e, m) => got.push(new TextDecoder().decode(m.data)) });
    await listener.flush();

    const nc = await connect({ servers: url });
    nc.publish(closing, new TextEncoder().encode('last words'));
    // nats.js flushes its buffer into the (corked) socket, then the connection closes in the same turn.
    await new Promise<void>((r) => queueMicrotask(r));
    await nc.close();

    await eventually(async () => got.length, (n) => n >= 1, { what: 'the frame written just before close()' });
    expect(got).toEqual(['last words']);
    sub.unsubscribe();
    await listener.close();
  });
});
