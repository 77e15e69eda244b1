import { eventSubject, subjects } from './subjects';

const event = { tenantId: 't1', type: 'billing.budget.exceeded', aggregateType: 'budget', aggregateId: 'b7' };

describe('eventSubject', () => {
  it('is evt.<tenant>.<context>.<aggregateType>.<aggregateId> without a prefix', () => {
    expect(eventSubject('', event)).toBe('evt.t1.billing.budget.b7');
  });

  it('puts the deployment prefix in front', () => {
    expect(eventSubject('run42.', event)).toBe('run42.evt.t1.billing.budget.b7');
  });

  it('takes the context from the event type, not the aggregate type', () => {
    expect(eventSubject('', { ...event, type: 'tenant.tenant.created', aggregateType: 'tenant' })).toBe('evt.t1.tenant.tenant.b7');
  });

  it('is the same subject as subjects.aggregate builds for a reader', () => {
    expect(eventSubject('p.', event)).toBe(subjects.aggregate('p.', 't1', 'billing', 'budget', 'b7'));
  });
});

describe('subjects', () => {
  it('builds the wildcard subjects of ARCHITECTURE.md §2', () => {
    expect(subjects.allEvents('')).toBe('evt.>');
    expect(subjects.tenantEvents('', 't1')).toBe('evt.t1.>');
    expect(subjects.contextEvents('', 'billing')).toBe('evt.*.billing.>');
    expect(subjects.allEvents('r.')).toBe('r.evt.>');
  });

  it('builds command and query subjects', () => {
    expect(subjects.command('', 'tenant', 'create')).toBe('cmd.tenant.create');
    expect(subjects.query('r.', 'tenant', 'get')).toBe('r.qry.tenant.get');
  });
});
