/**
 * Stable error codes, shared by every service and the gateway. The HTTP status is part of
 * the contract: a code always maps to the same status.
 */
export const errorCatalogue = {
  validation_failed: 400,
  bad_json: 400,
  unauthorized: 401,
  invalid_credentials: 401,
  mfa_required: 401,
  /** The route needs a recent authentication (RFC 9470): re-authenticate, then retry. */
  step_up_required: 401,
  invalid_token: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  slug_taken: 409,
  invalid_transition: 409,
  tenant_closed: 409,
  concurrent_modification: 409,
  idempotency_in_progress: 409,
  version_mismatch: 412,
  payload_too_large: 413,
  /** The request's headers (or its URL) are larger than the server reads. */
  headers_too_large: 431,
  /** The request did not arrive (headers and body) within the server's time. */
  request_timeout: 408,
  account_locked: 423,
  rate_limited: 429,
  quota_exceeded: 409,
  /** A budget has no room for this: the problem names it, its limit, spent, reserved and when it resets. */
  budget_exceeded: 402,
  unsupported_media_type: 415,
  idempotency_key_reused: 422,
  internal: 500,
  service_unavailable: 503,
  consistency_timeout: 503,
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export interface FieldError {
  /** JSON-pointer-like path of the offending field, e.g. `settings.allowedIpRanges.1` */
  field: string;
  message: string;
  /** Where the field is, for HTTP callers: body, query, path or header. */
  in?: 'body' | 'query' | 'path' | 'header';
}

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  fields?: FieldError[];
  /** Machine-readable members of the problem (RFC 9457 extension members), e.g. the budget that refused. */
  details?: Record<string, unknown>;
}

/** An error meant for the caller: it crosses NATS and becomes problem+json at the gateway. */
export class KeelError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly fields?: FieldError[],
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'KeelError';
  }

  get status(): number {
    return errorCatalogue[this.code];
  }

  toBody(): ErrorBody {
    return { code: this.code, message: this.message, ...(this.fields ? { fields: this.fields } : {}), ...(this.details ? { details: this.details } : {}) };
  }

  static fromBody(body: ErrorBody): KeelError {
    const code = isErrorCode(body.code) ? body.code : 'internal';
    return new KeelError(code, body.message, body.fields, body.details && typeof body.details === 'object' ? body.details : undefined);
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(errorCatalogue, value);
}
