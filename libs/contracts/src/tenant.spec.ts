import { z } from 'zod';
import {
  changePlanSchema,
  createTenantSchema,
  DEFAULT_TENANT_SETTINGS,
  isTenantId,
  PLAN_QUOTAS,
  quotasSchema,
  slugSchema,
  tenantIdSchema,
  tenantSettingsSchema,
  updateSettingsSchema,
} from './tenant';

const customQuotas = { maxUsers: 5, maxGpus: 2, maxGpuMemoryGb: 160, monthlyTokenQuota: 1_000, requestsPerMinute: 60 };

function issuesOf(schema: z.ZodType, input: unknown): { path: string; message: string }[] {
  const result = schema.safeParse(input);
  if (result.success) throw new Error(`expected ${JSON.stringify(input)} to be refused`);
  return result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
}

describe('slugSchema', () => {
  it.each([
    ['abc', 'the 3-character minimum'],
    ['a'.repeat(63), 'the 63-character maximum'],
    ['acme-corp', 'letters and a dash'],
    ['a1-2', 'digits after the first letter'],
    ['a--', 'trailing dashes'],
  ])('accepts %s (%s)', (slug) => {
    expect(slugSchema.parse(slug)).toBe(slug);
  });

  it.each([
    ['ab', 'shorter than 3'],
    ['a'.repeat(64), 'longer than 63'],
    ['1abc', 'starts with a digit'],
    ['-abc', 'starts with a dash'],
    ['Acme', 'uppercase first letter'],
    ['acMe', 'uppercase inside'],
    ['acme_corp', 'underscore'],
    ['acme.corp', 'dot'],
    ['acme corp', 'space'],
    ['', 'empty'],
  ])('refuses %j (%s)', (slug) => {
    expect(slugSchema.safeParse(slug).success).toBe(false);
  });
});

describe('createTenantSchema', () => {
  const base = { slug: 'acme', name: 'Acme Corp', plan: 'starter' };

  it('accepts a tenant on a standard plan without quotas', () => {
    expect(createTenantSchema.parse(base)).toEqual(base);
  });

  it('trims the name', () => {
    expect(createTenantSchema.parse({ ...base, name: '  Acme  ' }).name).toBe('Acme');
  });

  it('refuses a blank name', () => {
    expect(issuesOf(createTenantSchema, { ...base, name: '   ' })).toEqual([{ path: 'name', message: 'must not be empty' }]);
  });

  it('accepts plan custom with explicit quotas', () => {
    const parsed = createTenantSchema.parse({ ...base, plan: 'custom', quotas: customQuotas });
    expect(parsed.quotas).toEqual(customQuotas);
  });

  it('refuses plan custom without quotas, naming the quotas field', () => {
    expect(issuesOf(createTenantSchema, { ...base, plan: 'custom' })).toEqual([
      { path: 'quotas', message: 'plan "custom" needs explicit quotas' },
    ]);
  });

  it.each(['starter', 'professional', 'enterprise'])('refuses quotas on the fixed plan %s', (plan) => {
    const issues = issuesOf(createTenantSchema, { ...base, plan, quotas: customQuotas });
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ path: 'quotas' });
    expect(issues[0]!.message).toContain(`plan "${plan}" has fixed quotas`);
  });

  it('refuses an unknown plan', () => {
    expect(issuesOf(createTenantSchema, { ...base, plan: 'free' }).map((i) => i.path)).toEqual(['plan']);
  });

  it('refuses unknown keys', () => {
    expect(createTenantSchema.safeParse({ ...base, status: 'active' }).success).toBe(false);
  });

  it('refuses unknown keys inside quotas', () => {
    expect(createTenantSchema.safeParse({ ...base, plan: 'custom', quotas: { ...customQuotas, maxTeams: 3 } }).success).toBe(false);
  });

  it('refuses a bad slug', () => {
    expect(issuesOf(createTenantSchema, { ...base, slug: 'Acme' }).map((i) => i.path)).toEqual(['slug']);
  });
});

describe('changePlanSchema', () => {
  it('applies the same quota rule as creation', () => {
    expect(changePlanSchema.safeParse({ plan: 'enterprise' }).success).toBe(true);
    expect(changePlanSchema.safeParse({ plan: 'custom', quotas: customQuotas }).success).toBe(true);
    expect(changePlanSchema.safeParse({ plan: 'custom' }).success).toBe(false);
    expect(changePlanSchema.safeParse({ plan: 'enterprise', quotas: customQuotas }).success).toBe(false);
  });
});

describe('quotasSchema', () => {
  it('accepts every plan default', () => {
    for (const quotas of Object.values(PLAN_QUOTAS)) expect(quotasSchema.parse(quotas)).toEqual(quotas);
  });

  it.each([
    ['maxUsers', 0],
    ['maxUsers', 1.5],
    ['maxGpus', -1],
    ['requestsPerMinute', 0],
    ['monthlyTokenQuota', Number.MAX_SAFE_INTEGER + 2],
  ])('refuses %s = %p', (field, value) => {
    expect(new Set(issuesOf(quotasSchema, { ...customQuotas, [field]: value }).map((i) => i.path))).toEqual(new Set([field]));
  });

  it('refuses a missing field', () => {
    const { maxGpus: _, ...rest } = customQuotas;
    expect(issuesOf(quotasSchema, rest).map((i) => i.path)).toEqual(['maxGpus']);
  });
});

describe('tenantSettingsSchema', () => {
  it('accepts the defaults', () => {
    expect(tenantSettingsSchema.parse(DEFAULT_TENANT_SETTINGS)).toEqual(DEFAULT_TENANT_SETTINGS);
  });

  it.each([
    ['sessionTimeoutMinutes', 5],
    ['sessionTimeoutMinutes', 10_080],
    ['maxConcurrentSessions', 1],
    ['maxConcurrentSessions', 1_000],
    ['auditRetentionDays', 30],
    ['auditRetentionDays', 36_500],
  ])('accepts the bound %s = %p', (field, value) => {
    expect(tenantSettingsSchema.safeParse({ ...DEFAULT_TENANT_SETTINGS, [field]: value }).success).toBe(true);
  });

  it.each([
    ['sessionTimeoutMinutes', 4],
    ['sessionTimeoutMinutes', 10_081],
    ['sessionTimeoutMinutes', 60.5],
    ['maxConcurrentSessions', 0],
    ['maxConcurrentSessions', 1_001],
    ['auditRetentionDays', 29],
    ['auditRetentionDays', 36_501],
    ['dataResidency', 'mars'],
    ['mfaRequired', 'yes'],
  ])('refuses %s = %p', (field, value) => {
    expect(issuesOf(tenantSettingsSchema, { ...DEFAULT_TENANT_SETTINGS, [field]: value }).map((i) => i.path)).toEqual([field]);
  });

  it('accepts 256 IP ranges and refuses 257', () => {
    const ranges = (n: number) => Array.from({ length: n }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
    expect(tenantSettingsSchema.safeParse({ ...DEFAULT_TENANT_SETTINGS, allowedIpRanges: ranges(256) }).success).toBe(true);
    expect(tenantSettingsSchema.safeParse({ ...DEFAULT_TENANT_SETTINGS, allowedIpRanges: ranges(257) }).success).toBe(false);
  });

  it('refuses unknown keys', () => {
    expect(tenantSettingsSchema.safeParse({ ...DEFAULT_TENANT_SETTINGS, theme: 'dark' }).success).toBe(false);
  });
});

describe('updateSettingsSchema', () => {
  it('refuses an empty object', () => {
    expect(issuesOf(updateSettingsSchema, {})).toEqual([{ path: '', message: 'name at least one setting to change' }]);
  });

  it('accepts a single setting', () => {
    expect(updateSettingsSchema.parse({ mfaRequired: true })).toEqual({ mfaRequired: true });
  });

  it('normalises valid CIDR blocks', () => {
    expect(updateSettingsSchema.parse({ allowedIpRanges: ['10.0.0.0/08', '2001:DB8::/32'] })).toEqual({
      allowedIpRanges: ['10.0.0.0/8', '2001:db8::/32'],
    });
  });

  it('refuses a bad CIDR, pointing at its index and saying why', () => {
    expect(issuesOf(updateSettingsSchema, { allowedIpRanges: ['10.0.0.0/8', '10.0.0.1/8'] })).toEqual([
      { path: 'allowedIpRanges.1', message: '"10.0.0.1/8": host bits are set; use the network address' },
    ]);
  });

  it('reports every bad CIDR', () => {
    const paths = issuesOf(updateSettingsSchema, { allowedIpRanges: ['nope', '10.0.0.0/8', '10.0.0.0'] }).map((i) => i.path);
    expect(paths).toEqual(['allowedIpRanges.0', 'allowedIpRanges.2']);
  });

  it('refuses unknown keys', () => {
    expect(updateSettingsSchema.safeParse({ mfaRequired: true, theme: 'dark' }).success).toBe(false);
  });

  it('keeps the bounds of the full settings', () => {
    expect(updateSettingsSchema.safeParse({ sessionTimeoutMinutes: 4 }).success).toBe(false);
  });
});

describe('isTenantId', () => {
  it('says what tenantIdSchema says, for ids, slugs and near misses', () => {
    const samples = [
      '01a23bc6-1024-704a-87c2-d9b28adc6223', '01A23BC6-1024-704A-87C2-D9B28ADC6223', '00000000-0000-0000-0000-000000000000',
      'ffffffff-ffff-ffff-ffff-ffffffffffff', '01a23bc6-1024-904a-87c2-d9b28adc6223', '01a23bc6-1024-704a-c7c2-d9b28adc6223',
      '01a23bc6-1024-704a-87c2-d9b28adc622', '01a23bc6-1024-704a-87c2-d9b28adc6223 ', 'acme', '', 'a\u0000b', '{01a23bc6-1024-704a-87c2-d9b28adc6223}',
    ];
    for (const s of samples) expect({ s, id: isTenantId(s) }).toEqual({ s, id: tenantIdSchema.safeParse(s).success });
    expect(samples.filter(isTenantId)).toHaveLength(4);
  });
});
