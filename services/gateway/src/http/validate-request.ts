import { z } from 'zod';
import { FieldError, textProblem, textProblemMessage } from '@keel/contracts';
import { EndpointSpec } from './endpoint';
import { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { sendProblem, validationError } from './problem';
import { KeelRequest } from './request-context';

const IF_MATCH = /^(?:W\/)?"?(\d{1,9})"?$/;

function check(schema: z.ZodType | undefined, value: unknown, where: FieldError['in'], fields: FieldError[]): unknown {
  if (!schema) return value;
  const result = schema.safeParse(value ?? (where === 'body' ? undefined : {}));
  if (result.success) return result.data;
  for (const issue of result.error.issues) {
    fields.push({ in: where, field: issue.path.length ? issue.path.join('.') : '(whole)', message: issue.message });
  }
  return undefined;
}

/**
 * Fastify's own refusals before routing (`frameworkErrors`): a path whose percent-encoding is not
 * UTF-8 (how a client would try to send an unpaired surrogate) or a path parameter over the
 * router's length limit. A problem+json 400 like any other bad input, not Fastify's plain JSON.
 */
export function refuseBadUrl(error: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const message =
    error.code === 'FST_ERR_MAX_PARAM_LENGTH'
      ? 'a path parameter is longer than this API accepts'
      : error.code === 'FST_ERR_BAD_URL'
        ? 'must be percent-encoded UTF-8 (no unpaired surrogates, no invalid bytes)'
        : 'cannot be routed';
  sendProblem(reply, validationError([{ in: 'path', field: '(path)', message }]), req.url);
}

/**
 * The path parameter naming the tenant is looked up before the rest is validated (a caller of
 * another tenant gets 404, not the contract): text no field can hold is refused first, so it
 * never reaches a lookup.
 */
export function refuseBadTenantParam(spec: EndpointSpec, req: KeelRequest): void {
  if (!spec.tenantParam) return;
  const value = (req.params as Record<string, unknown> | undefined)?.[spec.tenantParam];
  const problem = typeof value === 'string' ? textProblem(value) : null;
  if (problem) throw validationError([{ in: 'path', field: spec.tenantParam, message: textProblemMessage(problem) }]);
}

/** Validates body, query, path and If-Match against the endpoint's declaration, all at once. */
export function validateRequest(spec: EndpointSpec, req: KeelRequest): void {
  const fields: FieldError[] = [];
  if (!spec.body && req.body !== undefined && req.body !== null && Object.keys(req.body as object).length > 0) {
    fields.push({ in: 'body', field: '(whole)', message: 'this route takes no body' });
  }
  if (!spec.query && req.query && typeof req.query === 'object' && Object.keys(req.query as object).length > 0) {
    fields.push({ in: 'query', field: '(whole)', message: 'this route takes no query parameters' });
  }
  req.valid = {
    params: check(spec.params, req.params, 'path', fields),
    query: check(spec.query, req.query, 'query', fields),
    body: check(spec.body, req.body, 'body', fields),
  };
  const ifMatch = req.headers['if-match'];
  if (typeof ifMatch === 'string' && ifMatch.trim() !== '*') {
    const m = spec.conditional ? IF_MATCH.exec(ifMatch.trim()) : null;
    if (!spec.conditional) fields.push({ in: 'header', field: 'If-Match', message: 'this route is not conditional' });
    else if (!m) fields.push({ in: 'header', field: 'If-Match', message: 'must be a version number, e.g. "3"' });
    else req.expectedVersion = Number(m[1]);
  }
  if (fields.length) throw validationError(fields);
}
