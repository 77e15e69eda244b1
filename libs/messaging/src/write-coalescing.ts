import { NodeTransport } from 'nats/lib/src/node_transport';

const PATCHED = Symbol.for('keel.nats.coalescedWrites');
const CORKED = Symbol.for('keel.nats.corked');

type Corkable = { cork(): void; uncork(): void; destroyed: boolean; [CORKED]?: boolean };


/**
 * Group commit at the NATS hop: every frame nats.js writes during one turn of the event loop goes
 * to the socket in one system call. nats.js flushes its outbound buffer once per microtask, so
 * under load each request, reply, publish and ack that completes in its own I/O callback costs a
 * socket write of its own; on a small VM those writes were the largest single cost of a command
 * (CPU profiles of the gateway and the tenant service under `tenant.create_e2e`). Corking the
 * socket on the first write of a turn and uncorking it in `setImmediate` (after the poll phase
 * has run every ready callback) sends them together; a frame waits at most for the rest of its
 * turn. nats.js closes a connection with `socket.destroy()`, which would drop what is still
 * corked: closing uncorks first, so everything written before `close()` is sent.
 *
 * Applied once per process, to nats.js's Node transport (the nats 2.x line Keel pins).
 */
export function coalesceNatsWrites(): void {
  const proto = NodeTransport.prototype as unknown as {
    _send(frame: Uint8Array): unknown;
    _closed(...args: unknown[]): unknown;
    socket?: Corkable;
    [PATCHED]?: true;
  };
  if (proto[PATCHED]) return;
  const send = proto._send;
  proto._send = function (this: { socket?: Corkable }, frame: Uint8Array) {
    const socket = this.socket;
    if (socket && !socket[CORKED] && !socket.destroyed) {
      socket[CORKED] = true;
      socket.cork();
      setImmediate(() => {
        socket[CORKED] = false;
        socket.uncork();
      });
    }
    return send.call(this, frame);
  };
  const closed = proto._closed;
  proto._closed = function (this: { socket?: Corkable }, ...args: unknown[]) {
    const socket = this.socket;
    if (socket?.[CORKED]) {
      socket[CORKED] = false;
      socket.uncork();
    }
    return closed.apply(this, args);
  };
  proto[PATCHED] = true;
}
