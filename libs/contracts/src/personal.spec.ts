import { z } from 'zod';
import { authEventTypes } from './auth';
import { eventSchemas, personalFieldsOf } from './events';
import { actorSubject, personal, personalFieldsOfSchema } from './personal';
import { text } from './text';

describe('personal fields in the contracts', () => {
  it('finds every declared event type\'s personal fields, and refuses personal() where sealing cannot reach it', () => {
    for (const type of Object.keys(eventSchemas)) expect(() => personalFieldsOf(type)).not.toThrow();
    expect(personalFieldsOf(authEventTypes.userCreated).map((f) => f.path.join('.'))).toEqual(['email', 'name']);
    expect(() => personalFieldsOfSchema(z.object({ emails: z.array(personal(text())) }))).toThrow(/inside array/);
    expect(() => personalFieldsOfSchema(z.object({ who: z.union([personal(text()), z.number()]) }))).toThrow(/inside union/);
    expect(personalFieldsOfSchema(z.object({ a: z.object({ b: personal(text()).optional() }), c: text() }))).toEqual([{ path: ['a', 'b'], subject: 'aggregate' }]);
    expect(personalFieldsOfSchema(z.object({ ip: personal(text(), { subject: { field: 'userId' } }), userId: z.uuid() }))).toEqual([{ path: ['ip'], subject: { field: 'userId' } }]);
  });

  it('names the data subject an actor is', () => {
    const at = (actor: Record<string, unknown>) => actorSubject({ tenantId: 't1', actor: actor as never });
    expect(at({ kind: 'user', id: 'u1', tenantId: 'platform' })).toEqual({ tenantId: 'platform', subjectId: 'u1' });
    expect(at({ kind: 'user', id: 'u1' })).toEqual({ tenantId: 't1', subjectId: 'u1' });
    expect(at({ kind: 'api_key', id: 'k1', tenantId: 't1' })).toEqual({ tenantId: 't1', subjectId: 'k1' });
    expect(at({ kind: 'system', id: 'auth', tenantId: 't1', onBehalfOf: 'u2' })).toEqual({ tenantId: 't1', subjectId: 'u2' });
    expect(at({ kind: 'system', id: 'bootstrap-operator' })).toEqual({ tenantId: 'platform', subjectId: 'bootstrap-operator' });
  });
});
