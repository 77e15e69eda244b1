import { ErrorCode, KeelError, RpcReply } from '@keel/contracts';
import { extractTraceContext, injectTraceContext, SpanKind, withSpan, Logger } from '@keel/observability';
import { ErrorCode as NatsErrorCode, headers as natsHeaders, Msg, NatsError, Subscription } from 'nats';
import { decodeJson, encodeJson, encodeOkReply } from './codec';
import { Messaging } from './connection';
import { outageReason } from './outage';

export { isDependencyOutage, isPostgresOutageState, outageReason } from './outage';

/**
 * One request over core NATS (never JetStream): the caller waits for one answer, in the
 * `RpcReply` format. `subject` is without the deployment prefix, e.g. `cmd.tenant.create`.
 * No responders, a timeout or a messaging failure become `service_unavailable`; an error answer
 * is thrown as the KeelError it names. RpcClient and KeelNatsClient both send through this.
 */
export async function requestRpc<T>(m: Messaging, subject: string, body: unknown, timeoutMs = m.requestTimeoutMs): Promise<T> {
  const h = natsHeaders();
  injectTraceContext(h);
  let msg: Msg;
  try {
    msg = await m.nc.request(`${m.prefix}${subject}`, encodeJson(body), { timeout: timeoutMs, headers: h });
  } catch (error) {
    const code = (error as NatsError).code;
    if (code === NatsErrorCode.NoResponders) {
      throw new KeelError('service_unavailable', `No service is answering ${subject}; try again shortly.`);
    }
    if (code === NatsErrorCode.Timeout) {
      throw new KeelError('service_unavailable', `${subject} did not answer within ${timeoutMs} ms; try again.`);
    }
    throw new KeelError('service_unavailable', `Messaging failed for ${subject}: ${(error as Error).message}`);
  }
  const reply = decodeJson<RpcReply<T>>(msg.data);
  if (reply.ok) return reply.value;
  throw KeelError.fromBody(reply.error);
}

/** Request/reply over core NATS (never JetStream): the caller waits for one answer. */
export class RpcClient {
  constructor(private readonly m: Messaging) {}

  /** `subject` is without the deployment prefix, e.g. `cmd.tenant.create`. */
  request<T>(subject: string, body: unknown, timeoutMs = this.m.requestTimeoutMs): Promise<T> {
    return requestRpc<T>(this.m, subject, body, timeoutMs);
  }
}

/** Receives the decoded body (and the request itself, for its headers and subject) and returns the answer. */
export type RpcHandlerFn = (body: unknown, msg: Msg) => Promise<unknown>;

/**
 * Serves `subject` in queue group `queue`, so N replicas share the requests. A handler's
 * KeelError is answered as such; an unreachable dependency (Postgres, Redis or NATS down or
 * restarting) as `service_unavailable`, which the gateway answers 503 with `Retry-After`;
 * anything else is logged and answered as `internal`.
 */
export function serveRpc(m: Messaging, subject: string, queue: string, handler: RpcHandlerFn, logger: Logger): Subscription {
  const full = `${m.prefix}${subject}`;
  return m.nc.subscribe(full, {
    queue,
    callback: (err, msg) => {
      if (err) {
        logger.error({ err, subject: full }, 'rpc subscription error');
        return;
      }
      void withSpan(subject, { kind: SpanKind.SERVER, parent: extractTraceContext(msg.headers) }, async () => {
        let data: Uint8Array;
        try {
          const body = msg.data.length ? decodeJson(msg.data) : {};
          data = encodeOkReply(await handler(body, msg));
        } catch (error) {
          data = encodeJson({ ok: false, error: toErrorBody(error, subject, logger) } satisfies RpcReply<never>);
        }
        const max = m.nc.info?.max_payload ?? 1024 * 1024;
        if (data.length > max - 1024) {
          // An answer NATS cannot carry would throw out of here and end the process: say so instead.
          logger.warn({ subject, bytes: data.length, max }, 'an answer is larger than a NATS message can be');
          data = encodeJson({
            ok: false,
            error: { code: 'payload_too_large', message: `The answer (${data.length} bytes) is larger than a message can carry (${max}); ask for a smaller page (a lower limit).` },
          } satisfies RpcReply<never>);
        }
        try {
          msg.respond(data);
        } catch (error) {
          logger.warn({ err: error, subject }, 'could not send an answer');
        }
      });
    },
  });
}

const outageWarnings = new Map<string, number>();

/** What a handler's error is answered as. Exported for the unit tests. */
export function toErrorBody(error: unknown, subject: string, logger: Logger): { code: ErrorCode; message: string } {
  if (error instanceof KeelError) return error.toBody();
  if (error instanceof SyntaxError) return { code: 'validation_failed', message: 'The request body is not valid JSON.' };
  const outage = outageReason(error);
  if (outage !== undefined) {
    // One warning per subject and 10 s: an outage fails every request at once.
    const last = outageWarnings.get(subject) ?? 0;
    if (Date.now() - last > 10_000) {
      if (outageWarnings.size > 1_000) outageWarnings.clear();
      outageWarnings.set(subject, Date.now());
      logger.warn({ err: error, subject }, `rpc handler: dependency unavailable (${outage})`);
    }
    return { code: 'service_unavailable', message: 'A dependency of this service is unavailable right now; retry shortly.' };
  }
  logger.error({ err: error, subject }, 'rpc handler failed');
  return { code: 'internal', message: 'An internal error occurred; it has been logged.' };
}
