import {
  DEFAULT_TENANT_SETTINGS,
  PLAN_QUOTAS,
  Quotas,
  TenantEvent,
  tenantEventTypes as T,
} from '@keel/contracts';
import { deciderSpec, fold } from '@keel/event-sourcing';
import { quotasFor, TenantDecisionCommand, tenantDecider, TenantState, toTenant } from './tenant.decider';

type Event = TenantEvent & { occurredAt?: string };

const customQuotas: Quotas = { maxUsers: 5, maxGpus: 2, maxGpuMemoryGb: 160, monthlyTokenQuota: 1_000, requestsPerMinute: 60 };

const created = (plan: 'starter' | 'professional' | 'enterprise' = 'starter', occurredAt?: string): Event => ({
  type: T.created,
  data: { slug: 'acme', name: 'Acme Corp', plan, quotas: { ...PLAN_QUOTAS[plan] }, settings: { ...DEFAULT_TENANT_SETTINGS } },
  ...(occurredAt ? { occurredAt } : {}),
});
const suspended = (reason = 'unpaid invoice'): Event => ({ type: T.suspended, data: { reason } });
const reactivated = (): Event => ({ type: T.reactivated, data: {} });
const closed = (reason?: string): Event => ({ type: T.closed, data: reason ? { reason } : {} });

/** given (past events) / when (command) / then (new events or a refusal). */
const { given } = deciderSpec(tenantDecider);

const everyCommand: TenantDecisionCommand[] = [
  { type: 'change_plan', data: { plan: 'enterprise' } },
  { type: 'update_settings', data: { mfaRequired: true } },
  { type: 'suspend', data: { reason: 'abuse' } },
  { type: 'reactivate', data: {} },
  { type: 'close', data: {} },
];

describe('tenant decider', () => {
  describe('create', () => {
    it.each(['starter', 'professional', 'enterprise'] as const)('creates a %s tenant with that plan’s default quotas and default settings', (plan) => {
      given()
        .when({ type: 'create', data: { slug: 'acme', name: 'Acme Corp', plan } })
        .then([
          {
            type: T.created,
            data: { slug: 'acme', name: 'Acme Corp', plan, quotas: PLAN_QUOTAS[plan], settings: DEFAULT_TENANT_SETTINGS },
          },
        ]);
    });

    it('creates a custom tenant with its explicit quotas', () => {
      given()
        .when({ type: 'create', data: { slug: 'acme', name: 'Acme Corp', plan: 'custom', quotas: customQuotas } })
        .then([{ type: T.created, data: { slug: 'acme', name: 'Acme Corp', plan: 'custom', quotas: customQuotas, settings: DEFAULT_TENANT_SETTINGS } }]);
    });

    it('refuses a custom tenant without quotas', () => {
      given()
        .when({ type: 'create', data: { slug: 'acme', name: 'Acme Corp', plan: 'custom' } })
        .thenRefused('validation_failed', /custom/);
    });

    it('gives the event copies, not the shared plan defaults', () => {
      const [event] = tenantDecider.decide({ type: 'create', data: { slug: 'acme', name: 'Acme', plan: 'starter' } }, tenantDecider.initialState());
      const data = event!.data as { quotas: Quotas; settings: object };
      expect(data.quotas).not.toBe(PLAN_QUOTAS.starter);
      expect(data.settings).not.toBe(DEFAULT_TENANT_SETTINGS);
    });

    it.each([
      ['an active tenant', [created()]],
      ['a suspended tenant', [created(), suspended()]],
      ['a closed tenant', [created(), closed()]],
    ])('refuses to create %s again with conflict', (_, history) => {
      given(...history)
        .when({ type: 'create', data: { slug: 'acme', name: 'Acme Corp', plan: 'starter' } })
        .thenRefused('conflict');
    });
  });

  describe('a tenant that does not exist', () => {
    it.each(everyCommand.map((c) => [c.type, c] as const))('refuses %s with not_found', (_, command) => {
      given().when(command).thenRefused('not_found');
    });
  });

  describe('change_plan', () => {
    it('moves to another plan with its default quotas, recording the previous plan', () => {
      given(created('starter'))
        .when({ type: 'change_plan', data: { plan: 'professional' } })
        .then([{ type: T.planChanged, data: { plan: 'professional', quotas: PLAN_QUOTAS.professional, previousPlan: 'starter' } }]);
    });

    it('moves to custom with explicit quotas', () => {
      given(created('enterprise'))
        .when({ type: 'change_plan', data: { plan: 'custom', quotas: customQuotas } })
        .then([{ type: T.planChanged, data: { plan: 'custom', quotas: customQuotas, previousPlan: 'enterprise' } }]);
    });

    it('changes the quotas of a custom tenant', () => {
      const more = { ...customQuotas, maxUsers: 50 };
      given(created(), { type: T.planChanged, data: { plan: 'custom', quotas: customQuotas, previousPlan: 'starter' } })
        .when({ type: 'change_plan', data: { plan: 'custom', quotas: more } })
        .then([{ type: T.planChanged, data: { plan: 'custom', quotas: more, previousPlan: 'custom' } }]);
    });

    it('decides nothing for the same standard plan', () => {
      given(created('professional')).when({ type: 'change_plan', data: { plan: 'professional' } }).thenNothing();
    });

    it('decides nothing for the same custom plan with the same quotas', () => {
      given(created(), { type: T.planChanged, data: { plan: 'custom', quotas: customQuotas, previousPlan: 'starter' } })
        .when({ type: 'change_plan', data: { plan: 'custom', quotas: { ...customQuotas } } })
        .thenNothing();
    });

    it('refuses custom without quotas', () => {
      given(created()).when({ type: 'change_plan', data: { plan: 'custom' } }).thenRefused('validation_failed');
    });

    it('is allowed while suspended', () => {
      given(created('starter'), suspended())
        .when({ type: 'change_plan', data: { plan: 'enterprise' } })
        .then([{ type: T.planChanged, data: { plan: 'enterprise', quotas: PLAN_QUOTAS.enterprise, previousPlan: 'starter' } }]);
    });
  });

  describe('update_settings', () => {
    it('records the changes and the merged settings', () => {
      given(created())
        .when({ type: 'update_settings', data: { mfaRequired: true, allowedIpRanges: ['10.0.0.0/8'] } })
        .then([
          {
            type: T.settingsUpdated,
            data: {
              changes: { mfaRequired: true, allowedIpRanges: ['10.0.0.0/8'] },
              settings: { ...DEFAULT_TENANT_SETTINGS, mfaRequired: true, allowedIpRanges: ['10.0.0.0/8'] },
            },
          },
        ]);
    });

    it('merges onto the settings as they stand after earlier updates', () => {
      const first = { ...DEFAULT_TENANT_SETTINGS, mfaRequired: true };
      given(created(), { type: T.settingsUpdated, data: { changes: { mfaRequired: true }, settings: first } })
        .when({ type: 'update_settings', data: { sessionTimeoutMinutes: 60 } })
        .then([{ type: T.settingsUpdated, data: { changes: { sessionTimeoutMinutes: 60 }, settings: { ...first, sessionTimeoutMinutes: 60 } } }]);
    });

    it('decides nothing when every named setting already has that value', () => {
      given(created())
        .when({ type: 'update_settings', data: { mfaRequired: DEFAULT_TENANT_SETTINGS.mfaRequired, dataResidency: 'global' } })
        .thenNothing();
    });

    it('is allowed while suspended', () => {
      const events = given(created(), suspended()).state;
      expect(tenantDecider.decide({ type: 'update_settings', data: { mfaRequired: true } }, events)).toHaveLength(1);
    });
  });

  describe('suspend', () => {
    it('suspends an active tenant with the reason', () => {
      given(created()).when({ type: 'suspend', data: { reason: 'unpaid invoice' } }).then([suspended('unpaid invoice')]);
    });

    it('suspends a reactivated tenant again', () => {
      given(created(), suspended(), reactivated()).when({ type: 'suspend', data: { reason: 'abuse' } }).then([suspended('abuse')]);
    });

    it('refuses to suspend a suspended tenant with invalid_transition', () => {
      given(created(), suspended()).when({ type: 'suspend', data: { reason: 'again' } }).thenRefused('invalid_transition', /already suspended/);
    });
  });

  describe('reactivate', () => {
    it('reactivates a suspended tenant', () => {
      given(created(), suspended()).when({ type: 'reactivate', data: {} }).then([reactivated()]);
    });

    it('refuses to reactivate an active tenant with invalid_transition', () => {
      given(created()).when({ type: 'reactivate', data: {} }).thenRefused('invalid_transition', /only a suspended tenant/);
    });

    it('refuses to reactivate a tenant that was reactivated already', () => {
      given(created(), suspended(), reactivated()).when({ type: 'reactivate', data: {} }).thenRefused('invalid_transition');
    });
  });

  describe('close', () => {
    it('closes an active tenant, with a reason', () => {
      given(created()).when({ type: 'close', data: { reason: 'contract ended' } }).then([closed('contract ended')]);
    });

    it('closes an active tenant without a reason', () => {
      given(created()).when({ type: 'close', data: {} }).then([{ type: T.closed, data: {} }]);
    });

    it('closes a suspended tenant', () => {
      given(created(), suspended()).when({ type: 'close', data: {} }).then([closed()]);
    });
  });

  describe('a closed tenant', () => {
    it.each(everyCommand.map((c) => [c.type, c] as const))('refuses %s with tenant_closed', (_, command) => {
      given(created(), closed()).when(command).thenRefused('tenant_closed');
    });

    it('refuses changes after being closed while suspended', () => {
      given(created(), suspended(), closed()).when({ type: 'reactivate', data: {} }).thenRefused('tenant_closed');
    });
  });

  describe('evolve', () => {
    it('starts from a tenant that does not exist', () => {
      expect(tenantDecider.initialState()).toEqual({ status: 'none' });
    });

    it('folds creation into an active tenant, created and updated at the event time', () => {
      expect(given(created('starter', '2024-01-01T00:00:00.000Z')).state).toEqual({
        status: 'active',
        slug: 'acme',
        name: 'Acme Corp',
        plan: 'starter',
        quotas: PLAN_QUOTAS.starter,
        settings: DEFAULT_TENANT_SETTINGS,
        suspendedReason: null,
        createdAt: '2024-01-01T00:00:00.000Z',
        updatedAt: '2024-01-01T00:00:00.000Z',
      });
    });

    it('folds a whole history, moving updatedAt and keeping createdAt', () => {
      const settings = { ...DEFAULT_TENANT_SETTINGS, mfaRequired: true };
      const history: Event[] = [
        created('starter', '2024-01-01T00:00:00.000Z'),
        { type: T.planChanged, data: { plan: 'custom', quotas: customQuotas, previousPlan: 'starter' }, occurredAt: '2024-02-01T00:00:00.000Z' },
        { type: T.settingsUpdated, data: { changes: { mfaRequired: true }, settings }, occurredAt: '2024-03-01T00:00:00.000Z' },
        { ...suspended('unpaid invoice'), occurredAt: '2024-04-01T00:00:00.000Z' },
      ];
      expect(fold(tenantDecider, history)).toEqual({
        status: 'suspended',
        slug: 'acme',
        name: 'Acme Corp',
        plan: 'custom',
        quotas: customQuotas,
        settings,
        suspendedReason: 'unpaid invoice',
        createdAt: '2024-01-01T00:00:00.000Z',
        updatedAt: '2024-04-01T00:00:00.000Z',
      });
    });

    it('clears the suspension reason on reactivation', () => {
      const state = fold(tenantDecider, [created(), suspended('x'), { ...reactivated(), occurredAt: '2024-05-01T00:00:00.000Z' }]);
      expect(state).toMatchObject({ status: 'active', suspendedReason: null, updatedAt: '2024-05-01T00:00:00.000Z' });
    });

    it('folds closing into a closed tenant', () => {
      const state = fold(tenantDecider, [created(), { ...closed('done'), occurredAt: '2024-06-01T00:00:00.000Z' }]);
      expect(state).toMatchObject({ status: 'closed', updatedAt: '2024-06-01T00:00:00.000Z' });
    });

    it('ignores events other than creation on a tenant that does not exist', () => {
      expect(fold(tenantDecider, [suspended(), closed()])).toEqual({ status: 'none' });
    });

    it('takes its times from the events: one written without a time gets the spec\'s stated clock, never a default of the decider', () => {
      expect(given(created()).state).toMatchObject({ createdAt: '2024-01-01T00:00:00.000Z', updatedAt: '2024-01-01T00:00:00.000Z' });
      expect(deciderSpec(tenantDecider, { at: '2025-05-05T05:05:05.000Z' }).given(created()).state).toMatchObject({ createdAt: '2025-05-05T05:05:05.000Z' });
    });
  });
});

describe('quotasFor', () => {
  it('returns a copy of the plan defaults', () => {
    const quotas = quotasFor('enterprise');
    expect(quotas).toEqual(PLAN_QUOTAS.enterprise);
    expect(quotas).not.toBe(PLAN_QUOTAS.enterprise);
  });

  it('requires explicit quotas for custom, naming the field', () => {
    expect(quotasFor('custom', customQuotas)).toEqual(customQuotas);
    expect(() => quotasFor('custom')).toThrow(expect.objectContaining({ code: 'validation_failed', fields: [{ field: 'quotas', message: 'required for plan "custom"' }] }));
  });
});

describe('toTenant', () => {
  it('is the public view of the state with its id and version', () => {
    const state: TenantState = fold(tenantDecider, [created('starter', '2024-01-01T00:00:00.000Z'), { ...suspended('audit'), occurredAt: '2024-01-02T00:00:00.000Z' }]);
    expect(toTenant('0190d4a5-0000-7000-8000-000000000001', state, 2)).toEqual({
      id: '0190d4a5-0000-7000-8000-000000000001',
      slug: 'acme',
      name: 'Acme Corp',
      plan: 'starter',
      quotas: PLAN_QUOTAS.starter,
      settings: DEFAULT_TENANT_SETTINGS,
      status: 'suspended',
      suspendedReason: 'audit',
      version: 2,
      createdAt: '2024-01-01T00:00:00.000Z',
      updatedAt: '2024-01-02T00:00:00.000Z',
    });
  });

  it('refuses a tenant that does not exist with not_found', () => {
    expect(() => toTenant('x', { status: 'none' }, 0)).toThrow(expect.objectContaining({ code: 'not_found' }));
  });
});
