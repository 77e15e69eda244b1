import { Actor } from './envelope';
import { ErrorBody } from './errors';

/** What every command carries besides its payload. */
export type CommandMeta = {
  actor: Actor;
  correlationId: string;
  /** When set, the command applies only if the aggregate is at this version (else 412). */
  expectedVersion?: number;
  /** The command's own id (from an `Idempotency-Key`): a retry of an applied command answers its first outcome. */
  commandId?: string;
};

export interface CommandRequest<P> {
  meta: CommandMeta;
  payload: P;
}

/** The answer of a command: the resulting state, its version and the event's stream position. */
export interface CommandResult<S> {
  state: S;
  version: number;
  position: number;
}

export type RpcReply<T> = { ok: true; value: T } | { ok: false; error: ErrorBody };

/** Query options shared by read-model queries. */
export interface ConsistencyOptions {
  /** Answer only once the read model has applied the event at this stream position. */
  consistentWith?: number;
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}
