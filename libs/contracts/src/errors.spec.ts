import { ErrorCode, errorCatalogue, isErrorCode, KeelError } from './errors';

describe('KeelError', () => {
  it.each([
    ['validation_failed', 400],
    ['bad_json', 400],
    ['unauthorized', 401],
    ['forbidden', 403],
    ['not_found', 404],
    ['conflict', 409],
    ['slug_taken', 409],
    ['invalid_transition', 409],
    ['tenant_closed', 409],
    ['concurrent_modification', 409],
    ['idempotency_in_progress', 409],
    ['version_mismatch', 412],
    ['payload_too_large', 413],
    ['headers_too_large', 431],
    ['request_timeout', 408],
    ['unsupported_media_type', 415],
    ['idempotency_key_reused', 422],
    ['internal', 500],
    ['invalid_credentials', 401],
    ['mfa_required', 401],
    ['step_up_required', 401],
    ['invalid_token', 401],
    ['account_locked', 423],
    ['rate_limited', 429],
    ['quota_exceeded', 409],
    ['budget_exceeded', 402],
    ['service_unavailable', 503],
    ['consistency_timeout', 503],
  ] as [ErrorCode, number][])('%s answers %i', (code, status) => {
    expect(new KeelError(code, 'x').status).toBe(status);
  });

  it('covers every code of the catalogue in the table above', () => {
    expect(Object.keys(errorCatalogue)).toHaveLength(28);
  });

  it('is an Error with its name, code and message', () => {
    const e = new KeelError('not_found', 'No such tenant.');
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('KeelError');
    expect(e.code).toBe('not_found');
    expect(e.message).toBe('No such tenant.');
  });

  it('leaves fields out of the body when it has none', () => {
    expect(new KeelError('conflict', 'Taken.').toBody()).toEqual({ code: 'conflict', message: 'Taken.' });
    expect('fields' in new KeelError('conflict', 'Taken.').toBody()).toBe(false);
  });

  it('survives a round trip through its body, fields included', () => {
    const fields = [{ field: 'settings.allowedIpRanges.1', message: 'host bits are set', in: 'body' as const }];
    const original = new KeelError('validation_failed', 'The request is invalid.', fields);
    const wire = JSON.parse(JSON.stringify(original.toBody()));
    const back = KeelError.fromBody(wire);
    expect(back).toBeInstanceOf(KeelError);
    expect(back.code).toBe('validation_failed');
    expect(back.status).toBe(400);
    expect(back.message).toBe('The request is invalid.');
    expect(back.fields).toEqual(fields);
  });

  it('turns an unknown code into internal, keeping the message', () => {
    const back = KeelError.fromBody({ code: 'teapot' as ErrorCode, message: 'short and stout' });
    expect(back.code).toBe('internal');
    expect(back.status).toBe(500);
    expect(back.message).toBe('short and stout');
  });
});

describe('isErrorCode', () => {
  it('recognises catalogue codes only', () => {
    expect(isErrorCode('version_mismatch')).toBe(true);
    expect(isErrorCode('teapot')).toBe(false);
    expect(isErrorCode(404)).toBe(false);
    expect(isErrorCode(undefined)).toBe(false);
  });
});

describe('error codes are own keys of the catalogue only', () => {
  it('does not take names inherited from Object.prototype for codes', () => {
    expect(KeelError.fromBody({ code: 'toString' as never, message: 'x' }).code).toBe('internal');
    expect(isErrorCode('constructor')).toBe(false);
  });
});
