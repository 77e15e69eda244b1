import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Inject } from '@nestjs/common';
import { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { trace } from '@opentelemetry/api';
import { ErrorCode, errorCatalogue, FieldError, KeelError } from '@keel/contracts';
import { isDependencyOutage, KEEL_LOGGER } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ReplayedResponse } from './replayed-response';

const titles: Record<ErrorCode, string> = {
  validation_failed: 'Invalid request',
  bad_json: 'Malformed JSON',
  unauthorized: 'Authentication required',
  invalid_credentials: 'Invalid credentials',
  mfa_required: 'Second factor required',
  step_up_required: 'Recent authentication required',
  invalid_token: 'Invalid token',
  account_locked: 'Account locked',
  rate_limited: 'Too many requests',
  quota_exceeded: 'Quota exceeded',
  budget_exceeded: 'Budget exceeded',
  forbidden: 'Not allowed',
  not_found: 'Not found',
  conflict: 'Conflict',
  slug_taken: 'Slug already taken',
  invalid_transition: 'Not allowed in the current state',
  tenant_closed: 'Tenant closed',
  concurrent_modification: 'Concurrent modification',
  idempotency_in_progress: 'Request with this Idempotency-Key in progress',
  version_mismatch: 'Version mismatch',
  payload_too_large: 'Payload too large',
  headers_too_large: 'Request headers too large',
  request_timeout: 'Request timeout',
  unsupported_media_type: 'Unsupported media type',
  idempotency_key_reused: 'Idempotency-Key reused with a different request',
  internal: 'Internal error',
  service_unavailable: 'Service unavailable',
  consistency_timeout: 'Read model not caught up yet',
};

const STANDARD_MEMBERS = new Set(['type', 'title', 'status', 'detail', 'instance', 'code', 'errors', 'traceId']);

/** RFC 9457 problem details with Keel's stable `code` and, for validation, every offending field. */
export function problem(error: KeelError, instance: string) {
  const traceId = trace.getActiveSpan()?.spanContext().traceId;
  return {
    type: `https://keel.dev/problems/${error.code.replace(/_/g, '-')}`,
    title: titles[error.code],
    status: error.status,
    detail: error.message,
    instance,
    code: error.code,
    ...(error.fields ? { errors: error.fields } : {}),
    // Extension members (RFC 9457 §3.2); never one of the members above.
    ...Object.fromEntries(Object.entries(error.details ?? {}).filter(([k]) => !STANDARD_MEMBERS.has(k))),
    ...(traceId ? { traceId } : {}),
  };
}

export function sendProblem(reply: FastifyReply, error: KeelError, instance: string): void {
  const headers: Record<string, string> = {};
  if (error.code === 'unauthorized') headers['www-authenticate'] = 'Bearer realm="keel"';
  if (error.status === 503) headers['retry-after'] = '1';
  void reply.status(error.status).headers(headers).type('application/problem+json').send(problem(error, instance));
}

/** Errors raised by Fastify itself, before a route runs (body parsing, limits, routing). */
export function fromFastifyError(error: FastifyError): KeelError | undefined {
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new KeelError('payload_too_large', 'The request body is larger than the 64 KiB this API accepts.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new KeelError('unsupported_media_type', 'Send the body as application/json.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new KeelError('bad_json', 'The body is empty but the Content-Type says JSON; send a JSON object.');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new KeelError('validation_failed', 'The Content-Length header does not match the body.');
  }
  if (error instanceof SyntaxError || error.code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
    return new KeelError('bad_json', `The body is not valid JSON: ${error.message}`);
  }
  return undefined;
}

export function toKeelError(error: unknown): KeelError | undefined {
  if (error instanceof KeelError) return error;
  if (error instanceof HttpException) {
    const status = error.getStatus();
    if (status === 404) return new KeelError('not_found', 'No such route; see /openapi.json for the API.');
    // Fastify's own parsing errors reach here wrapped by Nest.
    if (status === 400 && /json/i.test(error.message)) return new KeelError('bad_json', `The body is not valid JSON (${error.message}).`);
    if (status === 413) return fromFastifyError({ code: 'FST_ERR_CTP_BODY_TOO_LARGE' } as FastifyError);
    if (status === 415) return fromFastifyError({ code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE' } as FastifyError);
    const code = (Object.keys(errorCatalogue) as ErrorCode[]).find((c) => errorCatalogue[c] === status);
    if (code) return new KeelError(code, error.message);
  }
  // Redis (or anything the gateway reaches itself) down or restarting: an outage, not a bug.
  if (isDependencyOutage(error)) return new KeelError('service_unavailable', 'A dependency of the gateway is unavailable right now; retry shortly.');
  const fe = error as FastifyError;
  if (fe && typeof fe === 'object' && (typeof fe.code === 'string' || fe instanceof SyntaxError)) return fromFastifyError(fe);
  return undefined;
}

/** Answers any exception as its problem: a KeelError (or what maps to one) as it is, anything else logged and 500 `internal`. */
export function answerProblem(reply: FastifyReply, exception: unknown, instance: string, logger: Logger): void {
  let error = toKeelError(exception);
  if (!error) {
    logger.error({ err: exception, url: instance }, 'unhandled error');
    error = new KeelError('internal', 'An internal error occurred; it has been logged.');
  }
  sendProblem(reply, error, instance);
}

@Catch()
export class ProblemFilter implements ExceptionFilter {
  constructor(@Inject(KEEL_LOGGER) private readonly logger: Logger) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const ctx = host.switchToHttp();
    const req = ctx.getRequest<FastifyRequest>();
    const reply = ctx.getResponse<FastifyReply>();
    if (exception instanceof ReplayedResponse) {
      void reply.status(exception.status).type(exception.problem ? 'application/problem+json' : 'application/json').send(exception.body);
      return;
    }
    answerProblem(reply, exception, req.url, this.logger);
  }
}

export function validationError(fields: FieldError[]): KeelError {
  return new KeelError('validation_failed', `The request is invalid: ${fields.map((f) => `${f.in ?? 'body'} ${f.field}: ${f.message}`).join('; ')}`, fields);
}
