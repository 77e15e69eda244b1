import { DiscardPolicy, RetentionPolicy, StorageType } from 'nats';
import { decodeJson, encodeJson } from './codec';
import { durableName } from './connection';
import { eventStreamConfig, isNotFound } from './stream';

describe('durableName', () => {
  it('joins prefix and name and replaces every character a durable name may not hold', () => {
    expect(durableName('run1.', 'tenant.tenants')).toBe('run1_tenant_tenants');
    expect(durableName('', 'audit ledger>*/x')).toBe('audit_ledger___x');
  });

  it('keeps letters, digits, "_" and "-" as they are', () => {
    expect(durableName('ci_2024-05_', 'Tenant-Projection_9')).toBe('ci_2024-05_Tenant-Projection_9');
  });

  it('never yields a dot, wildcard or space, whatever it is given', () => {
    const name = durableName('a.b.', 'c >*\t.ü');
    expect(name).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(name).toHaveLength('a.b.c >*\t.ü'.length);
  });
});

describe('eventStreamConfig', () => {
  const config = eventStreamConfig({ stream: 'EVENTS_T', prefix: 'run7.', replicas: 3 });

  it('names the stream and captures every event under the prefix', () => {
    expect(config.name).toBe('EVENTS_T');
    expect(config.subjects).toEqual(['run7.evt.>']);
    expect(eventStreamConfig({ stream: 'EVENTS', prefix: '', replicas: 1 }).subjects).toEqual(['evt.>']);
  });

  it('refuses deletion and purge (nothing is ever removed by the application)', () => {
    expect(config.deny_delete).toBe(true);
    expect(config.deny_purge).toBe(true);
  });

  it('keeps everything: file storage, limits retention without any limit', () => {
    expect(config.storage).toBe(StorageType.File);
    expect(config.retention).toBe(RetentionPolicy.Limits);
    expect(config.discard).toBe(DiscardPolicy.Old);
    expect(config.max_msgs).toBe(-1);
    expect(config.max_bytes).toBe(-1);
    expect(config.max_age).toBe(0);
  });

  it('deduplicates retried publishes for two minutes, in nanoseconds', () => {
    expect(config.duplicate_window).toBe(120_000_000_000);
  });

  it('allows direct get (reads by subject served by any replica) and takes the replica count', () => {
    expect(config.allow_direct).toBe(true);
    expect(config.num_replicas).toBe(3);
    expect(eventStreamConfig({ stream: 'S', prefix: '', replicas: 1 }).num_replicas).toBe(1);
  });
});

describe('isNotFound', () => {
  it.each([
    ['a 404 code', { code: '404' }],
    ['stream not found (10059)', { api_error: { code: 404, err_code: 10059 } }],
    ['consumer not found (10014)', { api_error: { code: 404, err_code: 10014 } }],
    ['a "not found" message', new Error('no message found: stream not found')],
    ['a "Not Found" message in another case', new Error('Message Not Found')],
  ])('recognises %s', (_what, error) => {
    expect(isNotFound(error)).toBe(true);
  });

  it.each([
    ['undefined', undefined],
    ['null', null],
    ['a timeout', new Error('TIMEOUT')],
    ['another API error', { code: '400', api_error: { code: 400, err_code: 10071 }, message: 'wrong last sequence: 4' }],
    ['no responders', { code: '503', message: '503' }],
  ])('does not take %s for "not found"', (_what, error) => {
    expect(isNotFound(error)).toBe(false);
  });
});

describe('encodeJson / decodeJson', () => {
  it('round-trips values, including non-ASCII text', () => {
    const value = { a: 1, b: [true, null, 'zürich ✓ "quoted"'], c: { d: -0.5 } };
    expect(decodeJson(encodeJson(value))).toEqual(value);
  });

  it('encodes UTF-8 bytes of the JSON text', () => {
    const bytes = encodeJson({ s: 'é' });
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(bytes).toString('utf8')).toBe('{"s":"é"}');
    expect(bytes.length).toBe('{"s":"é"}'.length + 1); // é is two bytes
  });

  it('decodes what another producer sent as UTF-8 JSON', () => {
    expect(decodeJson(Buffer.from('{"x":[1,2],"y":"ß"}', 'utf8'))).toEqual({ x: [1, 2], y: 'ß' });
  });

  it('throws a SyntaxError on bytes that are not JSON', () => {
    expect(() => decodeJson(Buffer.from('not json'))).toThrow(SyntaxError);
    expect(() => decodeJson(new Uint8Array())).toThrow(SyntaxError);
  });
});
