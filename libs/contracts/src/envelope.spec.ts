import { contextOf, envelopeSchema, isEnvelope, newEventId, PLATFORM_TENANT, validateEnvelope } from './envelope';
import { KeelError } from './errors';

function wellFormed(): Record<string, unknown> {
  return {
    id: newEventId(),
    type: 'tenant.tenant.suspended',
    schemaVersion: 1,
    tenantId: '0190d4a5-0000-7000-8000-000000000001',
    aggregateType: 'tenant',
    aggregateId: '0190d4a5-0000-7000-8000-000000000001',
    aggregateVersion: 3,
    occurredAt: '2024-05-01T12:00:00.000Z',
    actor: { kind: 'user', id: 'u-1', tenantId: 't-1', ip: '203.0.113.9', userAgent: 'curl/8' },
    correlationId: 'req-42',
    causationId: 'msg-41',
    data: { reason: 'unpaid invoice' },
  };
}

function refusal(input: unknown): KeelError {
  try {
    validateEnvelope(input);
  } catch (error) {
    if (error instanceof KeelError) return error;
    throw error;
  }
  throw new Error('expected the envelope to be refused');
}

function refusedFields(input: unknown): string[] {
  return [...new Set((refusal(input).fields ?? []).map((f) => f.field))];
}

describe('validateEnvelope', () => {
  it('accepts a well-formed envelope and returns it unchanged', () => {
    const e = wellFormed();
    expect(validateEnvelope(e)).toEqual(e);
  });

  it('accepts the platform tenant and a system actor without optional fields', () => {
    const e: Record<string, unknown> = { ...wellFormed(), tenantId: PLATFORM_TENANT, actor: { kind: 'system', id: 'scheduler' } };
    delete e.causationId;
    expect(validateEnvelope(e)).toEqual(e);
  });

  it('refuses with a validation_failed KeelError naming the field', () => {
    const error = refusal({ ...wellFormed(), type: 'Tenant.tenant.created' });
    expect(error.code).toBe('validation_failed');
    expect(error.status).toBe(400);
    expect(error.message).toMatch(/^The event envelope is invalid: type: /);
    expect(error.fields).toEqual([{ field: 'type', message: '<context>.<aggregate>.<past-tense verb>' }]);
  });

  it.each(['tenant.created', 'tenant.tenant.created.again', 'tenant..created', '1tenant.tenant.created', 'tenant.tenant.Created', 'tenant.tenant.cre-ated', ''])(
    'refuses the type %j',
    (type) => {
      expect(refusedFields({ ...wellFormed(), type })).toEqual(['type']);
    },
  );

  it.each(['a.b', 'a*', '>', 'a b', '', 'x'.repeat(129)])('refuses the subject-unsafe tenantId %j', (tenantId) => {
    expect(refusedFields({ ...wellFormed(), tenantId })).toEqual(['tenantId']);
  });

  it('refuses subject-unsafe aggregate type and id', () => {
    expect(refusedFields({ ...wellFormed(), aggregateType: 'ten.ant' })).toEqual(['aggregateType']);
    expect(refusedFields({ ...wellFormed(), aggregateId: 'id>' })).toEqual(['aggregateId']);
  });

  it('refuses a missing actor', () => {
    const e = wellFormed();
    delete e.actor;
    expect(refusedFields(e)).toEqual(['actor']);
  });

  it('refuses an actor of an unknown kind or with extra keys', () => {
    expect(refusedFields({ ...wellFormed(), actor: { kind: 'robot', id: 'r' } })).toEqual(['actor.kind']);
    expect(refusedFields({ ...wellFormed(), actor: { kind: 'user', id: 'u', role: 'admin' } })).toEqual(['actor']);
  });

  it('refuses extra keys at the top level', () => {
    expect(refusedFields({ ...wellFormed(), position: 7 })).toEqual(['(body)']);
  });

  it('refuses version 0 and a non-integer schema version', () => {
    expect(refusedFields({ ...wellFormed(), aggregateVersion: 0 })).toEqual(['aggregateVersion']);
    expect(refusedFields({ ...wellFormed(), schemaVersion: 1.5 })).toEqual(['schemaVersion']);
  });

  it('refuses a non-ISO occurredAt, a non-UUID id and a non-object data', () => {
    expect(refusedFields({ ...wellFormed(), occurredAt: 'yesterday' })).toEqual(['occurredAt']);
    expect(refusedFields({ ...wellFormed(), id: 'not-a-uuid' })).toEqual(['id']);
    expect(refusedFields({ ...wellFormed(), data: [1, 2] })).toEqual(['data']);
  });

  it('lists every offending field at once', () => {
    const e: Record<string, unknown> = { ...wellFormed(), type: 'bad', tenantId: 'a.b' };
    delete e.actor;
    expect(refusedFields(e).sort()).toEqual(['actor', 'tenantId', 'type']);
  });

  it('is the schema that the envelope type documents', () => {
    expect(envelopeSchema.safeParse(wellFormed()).success).toBe(true);
  });
});

describe('newEventId', () => {
  it('produces distinct UUIDv7s that sort by creation time', () => {
    const ids = Array.from({ length: 50 }, () => newEventId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});

describe('contextOf', () => {
  it('is the first segment of the event type', () => {
    expect(contextOf('tenant.tenant.created')).toBe('tenant');
    expect(contextOf('billing.budget.exceeded')).toBe('billing');
    expect(contextOf('gpu_scheduler.lease.granted')).toBe('gpu_scheduler');
  });
});

describe('isEnvelope (the compiled fast path) agrees with the zod schema', () => {
  const mutations: [string, (e: Record<string, unknown>) => unknown][] = [
    ['well formed', (e) => e],
    ['not an object', () => [1]],
    ['null', () => null],
    ['missing id', ({ id: _, ...e }) => e],
    ['id not a uuid', (e) => ({ ...e, id: 'abc' })],
    ['uppercase uuid', (e) => ({ ...e, id: String(e.id).toUpperCase() })],
    ['extra field', (e) => ({ ...e, extra: 1 })],
    ['type without three parts', (e) => ({ ...e, type: 'tenant.created' })],
    ['schemaVersion 0', (e) => ({ ...e, schemaVersion: 0 })],
    ['schemaVersion fractional', (e) => ({ ...e, schemaVersion: 1.5 })],
    ['aggregateVersion a string', (e) => ({ ...e, aggregateVersion: '1' })],
    ['tenantId with a dot', (e) => ({ ...e, tenantId: 'a.b' })],
    ['aggregateId 129 long', (e) => ({ ...e, aggregateId: 'a'.repeat(129) })],
    ['occurredAt not UTC', (e) => ({ ...e, occurredAt: '2026-01-01T00:00:00+01:00' })],
    ['occurredAt 30 February', (e) => ({ ...e, occurredAt: '2026-02-30T00:00:00Z' })],
    ['occurredAt with fraction', (e) => ({ ...e, occurredAt: '2026-02-28T10:00:00.123Z' })],
    ['actor kind unknown', (e) => ({ ...e, actor: { kind: 'robot', id: 'x' } })],
    ['actor extra field', (e) => ({ ...e, actor: { kind: 'user', id: 'x', role: 'admin' } })],
    ['actor id of 200 astral characters (400 UTF-16 units)', (e) => ({ ...e, actor: { kind: 'user', id: '😀'.repeat(200) } })],
    ['actor id of 201 astral characters', (e) => ({ ...e, actor: { kind: 'user', id: '😀'.repeat(201) } })],
    ['userAgent 513 long', (e) => ({ ...e, actor: { kind: 'user', id: 'x', userAgent: 'u'.repeat(513) } })],
    ['correlationId empty', (e) => ({ ...e, correlationId: '' })],
    ['data an array', (e) => ({ ...e, data: [] })],
    ['data null', (e) => ({ ...e, data: null })],
    ['data with NUL and a lone surrogate (allowed: the edge refuses them, not the envelope)', (e) => ({ ...e, data: { name: 'a\u0000\ud800' } })],
    ['commandId present', (e) => ({ ...e, commandId: 'cmd-1' })],
  ];
  it.each(mutations)('%s', (_, mutate) => {
    const input = mutate(wellFormed());
    expect(isEnvelope(input)).toBe(envelopeSchema.safeParse(input).success);
  });
});
