/**
 * Whether an error says a dependency (PostgreSQL, Redis, NATS) cannot be reached or is going
 * away, rather than that the code is wrong. Such an error is answered as `service_unavailable`
 * (503 with `Retry-After`), never as `internal`: a restart of Postgres or Redis is an outage
 * the caller can wait out, not a bug. Everything else, a constraint violation, a syntax
 * error, a TypeError, stays a 500.
 *
 * Duck-typed on purpose (no import of pg, ioredis or nats here): TypeORM wraps driver errors
 * (`QueryFailedError.driverError`), Node wraps socket errors (`AggregateError` when several
 * addresses were tried), and libraries chain them as `cause`; all of those are followed.
 */
export function isDependencyOutage(error: unknown): boolean {
  return outageReason(error) !== undefined;
}

/** A short description of the outage `error` reports (for logs and the 503's detail), or undefined. */
export function outageReason(error: unknown, depth = 0): string | undefined {
  if (depth > 6 || error === null || typeof error !== 'object') return undefined;
  const e = error as { code?: unknown; name?: unknown; message?: unknown; errno?: unknown; driverError?: unknown; cause?: unknown; errors?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const name = typeof e.name === 'string' ? e.name : '';
  const message = typeof e.message === 'string' ? e.message : '';

  if (code && SOCKET_CODES.has(code)) return `connection failed (${code})`;
  if (code && isPostgresOutageState(code)) return `database unavailable (SQLSTATE ${code})`;
  if (name === 'NatsError' && code && NATS_CODES.has(code)) return `messaging unavailable (${code})`;
  if (name === 'MaxRetriesPerRequestError') return 'Redis unavailable (retries exhausted)';
  // TypeORM releases a query runner whose connection failed (the server ended it, the socket
  // broke); what the transaction tries next meets this, without the original error.
  if (name === 'QueryRunnerAlreadyReleasedError' || name === 'QueryRunnerProviderAlreadyReleasedError') return 'database connection lost';
  if (name === 'ReplyError' && REDIS_REPLY.test(message)) return `Redis unavailable (${message.split(' ')[0]})`;
  for (const pattern of MESSAGES) if (pattern.test(message)) return message;

  for (const inner of [e.driverError, e.cause]) {
    const r = outageReason(inner, depth + 1);
    if (r) return r;
  }
  if (Array.isArray(e.errors)) {
    for (const inner of e.errors) {
      const r = outageReason(inner, depth + 1);
      if (r) return r;
    }
  }
  return undefined;
}

/** Node socket errors: the server is not there, or went away mid-conversation. */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED', 'ENOTCONN']);

/**
 * SQLSTATEs of an outage: class 08 (connection exception), 57P01 admin shutdown, 57P02 crash
 * shutdown, 57P03 cannot connect now (starting up, shutting down, in recovery), 57P05 idle
 * session timeout, 57014 a statement cancelled (by `statement_timeout`), 25P03 an idle
 * transaction ended by `idle_in_transaction_session_timeout`, class 53 (too many connections,
 * out of memory or disk), 58000/58030 system and I/O errors.
 */
export function isPostgresOutageState(code: string): boolean {
  if (!/^[0-9A-Z]{5}$/.test(code)) return false;
  return code.startsWith('08') || code.startsWith('53') || ['57P01', '57P02', '57P03', '57P05', '57014', '25P03', '58000', '58030'].includes(code);
}

/** nats.js error codes for a connection that is not there (not for a bad subject or payload). */
const NATS_CODES = new Set(['CONNECTION_CLOSED', 'CONNECTION_DRAINING', 'CONNECTION_REFUSED', 'CONNECTION_TIMEOUT', 'DISCONNECT', 'TIMEOUT', '503']);

/** Redis replies of a server that is up but cannot serve yet. */
const REDIS_REPLY = /^(LOADING|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|READONLY)\b/;

/** Messages of pg, pg-pool, TypeORM and ioredis when the connection is missing or lost. */
const MESSAGES = [
  /^Connection terminated/, // pg: "Connection terminated unexpectedly", "... due to connection timeout"
  /^timeout exceeded when trying to connect$/, // pg-pool connectionTimeoutMillis
  /^Client has encountered a connection error and is not queryable$/, // pg
  /^Cannot use a pool after calling end on the pool$/, // pg-pool, during shutdown
  /^Query read timeout$/, // pg query_timeout
  /^Connection is closed\.?$/, // ioredis
  /^Stream isn't writeable and enableOfflineQueue options is false$/, // ioredis, not connected
  /^Reached the max retries per request limit/, // ioredis
  /^Driver not Connected$/, // TypeORM
];
