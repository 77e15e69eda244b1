import { z } from 'zod';
import { checkCidr } from './cidr';
import { text } from './text';

export const TENANT_CONTEXT = 'tenant';
export const TENANT_AGGREGATE = 'tenant';

export const slugSchema = text()
  .regex(/^[a-z][a-z0-9-]{2,62}$/, 'must match ^[a-z][a-z0-9-]{2,62}$ (lowercase letter first, then letters, digits or "-")');

export const planSchema = z.enum(['starter', 'professional', 'enterprise', 'custom']);
export type Plan = z.infer<typeof planSchema>;

export const quotasSchema = z
  .object({
    maxUsers: z.number().int().min(1).max(1_000_000),
    maxGpus: z.number().int().min(0).max(100_000),
    maxGpuMemoryGb: z.number().int().min(0).max(100_000_000),
    monthlyTokenQuota: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    requestsPerMinute: z.number().int().min(1).max(10_000_000),
  })
  .strict();
export type Quotas = z.infer<typeof quotasSchema>;

/** The one place where a plan's default quotas are defined. `custom` has none: it takes explicit values. */
export const PLAN_QUOTAS: Record<Exclude<Plan, 'custom'>, Quotas> = {
  starter: { maxUsers: 10, maxGpus: 1, maxGpuMemoryGb: 80, monthlyTokenQuota: 5_000_000, requestsPerMinute: 600 },
  professional: { maxUsers: 250, maxGpus: 8, maxGpuMemoryGb: 640, monthlyTokenQuota: 100_000_000, requestsPerMinute: 6_000 },
  enterprise: { maxUsers: 10_000, maxGpus: 64, maxGpuMemoryGb: 5_120, monthlyTokenQuota: 2_000_000_000, requestsPerMinute: 60_000 },
};

export const cidrSchema = text().transform((value, ctx) => {
  const check = checkCidr(value);
  if (!check.ok) {
    ctx.addIssue({ code: 'custom', message: `"${value}": ${check.reason}` });
    return z.NEVER;
  }
  return check.normalized;
});

export const dataResidencySchema = z.enum(['global', 'us', 'eu', 'uk', 'apac']);

export const tenantSettingsSchema = z
  .object({
    mfaRequired: z.boolean(),
    sessionTimeoutMinutes: z.number().int().min(5).max(10_080),
    maxConcurrentSessions: z.number().int().min(1).max(1_000),
    allowedIpRanges: z.array(cidrSchema).max(256),
    dataResidency: dataResidencySchema,
    auditRetentionDays: z.number().int().min(30).max(36_500),
    /** Wrong passwords in a row before an account is locked (for a growing period). */
    maxFailedLogins: z.number().int().min(3).max(50),
  })
  .strict();
export type TenantSettings = z.infer<typeof tenantSettingsSchema>;

/** Defaults a new tenant starts with. Seven years of audit retention covers SOX. */
export const DEFAULT_TENANT_SETTINGS: TenantSettings = {
  mfaRequired: false,
  sessionTimeoutMinutes: 480,
  maxConcurrentSessions: 10,
  allowedIpRanges: [],
  dataResidency: 'global',
  auditRetentionDays: 2_555,
  maxFailedLogins: 5,
};

export const tenantStatusSchema = z.enum(['active', 'suspended', 'closed']);
export type TenantStatus = z.infer<typeof tenantStatusSchema>;

export interface Tenant {
  id: string;
  slug: string;
  name: string;
  plan: Plan;
  quotas: Quotas;
  settings: TenantSettings;
  status: TenantStatus;
  suspendedReason: string | null;
  version: number;
  createdAt: string;
  updatedAt: string;
}

const nameSchema = text().trim().min(1, 'must not be empty').max(200);
const reasonSchema = text({ multiline: true }).trim().min(1, 'must not be empty').max(1_000);

// ---- commands (payloads as they cross NATS; the gateway validates with the same schemas) ----

export const createTenantSchema = z
  .object({ slug: slugSchema, name: nameSchema, plan: planSchema, quotas: quotasSchema.optional() })
  .strict()
  .superRefine((v, ctx) => quotaRule(v.plan, v.quotas, ctx));

export const changePlanSchema = z
  .object({ plan: planSchema, quotas: quotasSchema.optional() })
  .strict()
  .superRefine((v, ctx) => quotaRule(v.plan, v.quotas, ctx));

function quotaRule(plan: Plan, quotas: Quotas | undefined, ctx: z.RefinementCtx): void {
  if (plan === 'custom' && !quotas) {
    ctx.addIssue({ code: 'custom', path: ['quotas'], message: 'plan "custom" needs explicit quotas' });
  }
  if (plan !== 'custom' && quotas) {
    ctx.addIssue({
      code: 'custom',
      path: ['quotas'],
      message: `plan "${plan}" has fixed quotas; use plan "custom" to set them explicitly`,
    });
  }
}

export const updateSettingsSchema = tenantSettingsSchema
  .partial()
  .strict()
  .refine((v) => Object.keys(v).length > 0, { message: 'name at least one setting to change' });

export const suspendTenantSchema = z.object({ reason: reasonSchema }).strict();
export const closeTenantSchema = z.object({ reason: reasonSchema.optional() }).strict();
export const tenantIdSchema = z.uuid();

export type CreateTenant = z.infer<typeof createTenantSchema>;
export type ChangePlan = z.infer<typeof changePlanSchema>;
export type UpdateSettings = z.infer<typeof updateSettingsSchema>;

export type TenantCommand =
  | { type: 'create'; tenantId: string; data: CreateTenant }
  | { type: 'change_plan'; tenantId: string; data: ChangePlan }
  | { type: 'update_settings'; tenantId: string; data: UpdateSettings }
  | { type: 'suspend'; tenantId: string; data: { reason: string } }
  | { type: 'reactivate'; tenantId: string; data: Record<string, never> }
  | { type: 'close'; tenantId: string; data: { reason?: string } };

/** NATS request subjects of the tenant service (without the deployment prefix). */
export const tenantCommands = {
  create: 'create',
  change_plan: 'change_plan',
  update_settings: 'update_settings',
  suspend: 'suspend',
  reactivate: 'reactivate',
  close: 'close',
} as const;

// ---- events ----

export const tenantEventTypes = {
  created: 'tenant.tenant.created',
  planChanged: 'tenant.tenant.plan_changed',
  settingsUpdated: 'tenant.tenant.settings_updated',
  suspended: 'tenant.tenant.suspended',
  reactivated: 'tenant.tenant.reactivated',
  closed: 'tenant.tenant.closed',
} as const;

export type TenantEvent =
  | {
      type: typeof tenantEventTypes.created;
      data: { slug: string; name: string; plan: Plan; quotas: Quotas; settings: TenantSettings };
    }
  | { type: typeof tenantEventTypes.planChanged; data: { plan: Plan; quotas: Quotas; previousPlan: Plan } }
  | { type: typeof tenantEventTypes.settingsUpdated; data: { changes: UpdateSettings; settings: TenantSettings } }
  | { type: typeof tenantEventTypes.suspended; data: { reason: string } }
  | { type: typeof tenantEventTypes.reactivated; data: Record<string, never> }
  | { type: typeof tenantEventTypes.closed; data: { reason?: string } };

// ---- queries ----

export const tenantQueries = { get: 'get', list: 'list' } as const;

export const getTenantQuerySchema = z
  .object({ idOrSlug: text().min(1).max(200), consistentWith: z.number().int().min(0).optional() })
  .strict();

export const listTenantsQuerySchema = z
  .object({
    cursor: text().max(200).optional(),
    limit: z.number().int().min(1).max(500).default(50),
    status: tenantStatusSchema.optional(),
    consistentWith: z.number().int().min(0).optional(),
  })
  .strict();
export type ListTenantsQuery = z.infer<typeof listTenantsQuerySchema>;
