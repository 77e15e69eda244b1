import { DEFAULT_TENANT_SETTINGS, PLAN_QUOTAS, tenantEventTypes } from './tenant';
import { authEventTypes } from './auth';
import { ssoEventTypes } from './sso';
import { opsEventTypes } from './projections';
import { securityEventTypes } from './security';
import { billingEventTypes } from './billing';
import { webhookEventTypes } from './webhooks';
import { invoiceEventTypes } from './invoices';
import { EventBodyError, eventContexts, eventSchemas, validateEventBody } from './events';

const refusal = (envelope: { type: string; data: Record<string, unknown> }) => {
  try {
    validateEventBody(envelope);
  } catch (error) {
    return error;
  }
  return undefined;
};

describe('event body schemas', () => {
  it('declare every event type of tenant, auth (sso included), billing (webhooks included), ops and security', () => {
    const declared = [tenantEventTypes, authEventTypes, ssoEventTypes, billingEventTypes, webhookEventTypes, invoiceEventTypes, opsEventTypes, securityEventTypes].flatMap((types) => Object.values(types)).sort();
    expect(Object.keys(eventSchemas).sort()).toEqual(declared);
    expect([...eventContexts].sort()).toEqual(['auth', 'billing', 'ops', 'security', 'tenant']);
  });

  it('accept the bodies the services publish', () => {
    const tenant = { slug: 'acme-co', name: 'Acme', plan: 'starter', quotas: PLAN_QUOTAS.starter, settings: DEFAULT_TENANT_SETTINGS };
    const bodies: [string, Record<string, unknown>][] = [
      [tenantEventTypes.created, tenant],
      [tenantEventTypes.planChanged, { plan: 'professional', quotas: PLAN_QUOTAS.professional, previousPlan: 'starter' }],
      [tenantEventTypes.settingsUpdated, { changes: { mfaRequired: true }, settings: { ...DEFAULT_TENANT_SETTINGS, mfaRequired: true, allowedIpRanges: ['10.0.0.0/8'] } }],
      [tenantEventTypes.suspended, { reason: 'unpaid\ninvoice 7' }],
      [tenantEventTypes.reactivated, {}],
      [tenantEventTypes.closed, {}],
      [authEventTypes.userCreated, { email: 'ada@example.com', name: 'Ada', roles: ['viewer'] }],
      [authEventTypes.userLoginFailed, {}],
      [authEventTypes.userLocked, { until: new Date().toISOString() }],
      [authEventTypes.userMfaEnrolled, { method: 'totp', recoveryCodes: 10 }],
      [authEventTypes.sessionStarted, { userId: '0190e7a4-0c4a-7cc2-8a53-6f3f9d0b1a2c' }],
      [authEventTypes.roleGranted, { userId: '0190e7a4-0c4a-7cc2-8a53-6f3f9d0b1a2c', role: 'developer' }],
      [authEventTypes.signingKeyRotated, { kid: '2026-12-01-abc', retired: [] }],
      [ssoEventTypes.signedIn, { providerId: '0190e7a4-0c4a-7cc2-8a53-6f3f9d0b1a2c', userId: '0190e7a4-0c4a-7cc2-8a53-6f3f9d0b1a2d', roles: ['viewer'], teamRoles: [] }],
      [opsEventTypes.deadLetterSkipped, { projection: 'tenant.tenants', position: 7, subject: 'evt.t.tenant.tenant.t', reason: 'poison' }],
    ];
    for (const [type, data] of bodies) expect({ type, refusal: refusal({ type, data }) }).toEqual({ type, refusal: undefined });
  });

  it('allow a field added later (a compatible change) and do not change the body', () => {
    const data = { reason: 'unpaid', ticket: 'T-1' };
    expect(refusal({ type: tenantEventTypes.suspended, data })).toBeUndefined();
    expect(data).toEqual({ reason: 'unpaid', ticket: 'T-1' });
  });

  it('refuse a body that does not match, naming the field, as a publisher bug (not a KeelError)', () => {
    const wrong = refusal({ type: tenantEventTypes.planChanged, data: { plan: 'gold', quotas: PLAN_QUOTAS.starter } });
    expect(wrong).toBeInstanceOf(EventBodyError);
    expect((wrong as Error).message).toContain('tenant.tenant.plan_changed');
    expect((wrong as Error).message).toContain('plan:');
    expect((wrong as Error).message).toContain('previousPlan:');
    expect(refusal({ type: authEventTypes.userCreated, data: { n: 1 } })).toBeInstanceOf(EventBodyError);
    expect(refusal({ type: tenantEventTypes.suspended, data: { reason: 'a\u0000b' } })).toBeInstanceOf(EventBodyError);
  });

  it('refuse a type of a Keel context that is not declared', () => {
    const unknown = refusal({ type: 'tenant.tenant.renamed', data: {} });
    expect(unknown).toBeInstanceOf(EventBodyError);
    expect((unknown as Error).message).toContain('not declared');
    expect(refusal({ type: 'auth.user.teleported', data: {} })).toBeInstanceOf(EventBodyError);
  });

  it('leave events of contexts that are not Keel\'s (the generic libraries\' test fixtures) alone', () => {
    expect(refusal({ type: 'shop.cart.item_added', data: { sku: 'x' } })).toBeUndefined();
  });
});
