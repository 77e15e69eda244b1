import { ClientProxy, ReadPacket, WritePacket } from '@nestjs/microservices';
import { EventEnvelope } from '@keel/contracts';
import { Messaging } from '../connection';
import { EventStore } from '../event-store';
import { requestRpc } from '../rpc';

export interface KeelNatsClientOptions {
  /** The connection (owned by whoever made it: closing the client does not close it). */
  messaging: Messaging | (() => Messaging);
  /** How long `send` waits for an answer (default: the deployment's request timeout). */
  timeoutMs?: number;
}

/**
 * The Nest client of KeelNatsTransport: `client.send(subject, body)` is a request on
 * `<prefix><subject>` through the same code as RpcClient (`requestRpc`: the `RpcReply` format,
 * trace context in the headers, an error answer thrown as its KeelError, no responders or a
 * timeout as `service_unavailable`); `client.emit(subject, envelope)` appends the event on the
 * fact path (validated, `Nats-Msg-Id` = its id) and emits its position. `subject` is the event's
 * own subject without the deployment prefix.
 */
export class KeelNatsClient extends ClientProxy {
  private store?: EventStore;

  constructor(private readonly o: KeelNatsClientOptions) {
    super();
  }

  private get m(): Messaging {
    return typeof this.o.messaging === 'function' ? this.o.messaging() : this.o.messaging;
  }

  async connect(): Promise<unknown> {
    return this.m.nc;
  }

  async close(): Promise<void> {
    // The connection belongs to the messaging module (or to whoever passed it).
  }

  unwrap<T>(): T {
    return this.m.nc as T;
  }

  protected publish(packet: ReadPacket, callback: (packet: WritePacket) => void): () => void {
    let cancelled = false;
    requestRpc(this.m, this.normalizePattern(packet.pattern), packet.data, this.o.timeoutMs ?? this.m.requestTimeoutMs).then(
      (response) => {
        if (!cancelled) callback({ response, isDisposed: true });
      },
      (err) => {
        if (!cancelled) callback({ err });
      },
    );
    // A request cannot be withdrawn once sent; unsubscribing only drops its answer.
    return () => {
      cancelled = true;
    };
  }

  protected async dispatchEvent<T = number>(packet: ReadPacket<EventEnvelope>): Promise<T> {
    this.store ??= new EventStore(this.m);
    const subject = this.normalizePattern(packet.pattern);
    const own = this.store.subjectOf(packet.data).slice(this.m.prefix.length);
    if (own !== subject) throw new Error(`event ${packet.data.id} belongs on ${own}, not ${subject}`);
    const [position] = await this.store.appendFacts([packet.data]);
    return position as T;
  }
}
