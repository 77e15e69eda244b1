import { z } from 'zod';
import { queryInteger } from './validation';
import { checkCidr } from './cidr';
import { command, commandRequest, consistentWithParam, emptyRequest, isoTime, pageOf, positionSchema, query, route, routeGroup, SameType, serviceContract } from './contract';
import { permissions } from './permissions';
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
    /**
     * Failed sign-ins to the tenant in one minute that raise a `security.alert.raised` (once per
     * minute). Optional: tenants created before it existed have the default.
     */
    failedSignInAlertThreshold: z.number().int().min(1).max(1_000_000).optional(),
    /**
     * How long after signing in (or re-authenticating) a user may do sensitive things for themselves
     * (second factor, password, API keys) without proving who they are again. Optional: tenants
     * created before it existed have the default.
     */
    stepUpWindowSeconds: z.number().int().min(5).max(86_400).optional(),
    /**
     * The longest an API key may live, in days: caps `expiresAt` at creation (a key without one
     * gets this). Optional: tenants created before it existed have the default (365).
     */
    apiKeyMaxLifetimeDays: z.number().int().min(1).max(3_650).optional(),
    /**
     * The tenant's IANA time zone (`Europe/Berlin`): where its invoice months begin and end.
     * Optional: a tenant without one is invoiced in UTC.
     */
    timeZone: text()
      .min(1)
      .max(64)
      .refine((z) => !/^(system|local)$/i.test(z) && isTimeZone(z), 'must be an IANA time zone such as Europe/Berlin, America/Los_Angeles or UTC')
      .optional(),
  })
  .strict();

function isTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}
export type TenantSettings = z.infer<typeof tenantSettingsSchema>;

/** Failed sign-ins per minute that raise an alert when a tenant's settings do not say (the seeds use 10 for a team, 100 for an enterprise). */
export const DEFAULT_FAILED_SIGN_IN_ALERT_THRESHOLD = 100;

/** The step-up window when a tenant's settings do not say (10 minutes). */
export const DEFAULT_STEP_UP_WINDOW_SECONDS = 600;

/** A tenant's step-up window, tolerating settings stored before the setting existed. */
export const stepUpWindowOf = (settings: Partial<TenantSettings> | undefined): number => settings?.stepUpWindowSeconds ?? DEFAULT_STEP_UP_WINDOW_SECONDS;

/** The longest an API key lives when a tenant's settings do not say (a year). */
export const DEFAULT_API_KEY_MAX_LIFETIME_DAYS = 365;

/** A tenant's API key lifetime cap in days, tolerating settings stored before the setting existed. */
export const apiKeyMaxLifetimeDaysOf = (settings: Partial<TenantSettings> | undefined): number => settings?.apiKeyMaxLifetimeDays ?? DEFAULT_API_KEY_MAX_LIFETIME_DAYS;

/** Defaults a new tenant starts with. Seven years of audit retention covers SOX. */
export const DEFAULT_TENANT_SETTINGS: TenantSettings = {
  mfaRequired: false,
  sessionTimeoutMinutes: 480,
  maxConcurrentSessions: 10,
  allowedIpRanges: [],
  dataResidency: 'global',
  auditRetentionDays: 2_555,
  maxFailedLogins: 5,
  failedSignInAlertThreshold: DEFAULT_FAILED_SIGN_IN_ALERT_THRESHOLD,
  stepUpWindowSeconds: DEFAULT_STEP_UP_WINDOW_SECONDS,
  apiKeyMaxLifetimeDays: DEFAULT_API_KEY_MAX_LIFETIME_DAYS,
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
const TENANT_ID = z.regexes.uuid();
/** `tenantIdSchema`'s test, without a parse: for hot paths that only ask whether a string is an id. */
export const isTenantId = (value: string): boolean => TENANT_ID.test(value);

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

// ---- answers ----

/** Settings as a tenant's answers and events carry them (already normalised: no transforms to run again). */
export const tenantSettingsViewSchema = tenantSettingsSchema.extend({ allowedIpRanges: z.array(text()).max(256) });

export const tenantSchema = z
  .object({
    id: z.uuid(),
    slug: text(),
    name: text(),
    plan: planSchema,
    quotas: quotasSchema,
    settings: tenantSettingsViewSchema,
    status: tenantStatusSchema,
    suspendedReason: text({ multiline: true }).nullable(),
    version: z.number().int().min(0),
    createdAt: isoTime,
    updatedAt: isoTime,
  })
  .meta({ id: 'Tenant' });

export const tenantCommandResultSchema = z.object({ state: tenantSchema, version: z.number().int(), position: positionSchema });
export const tenantPageSchema = pageOf(tenantSchema).meta({ id: 'TenantPage' });
/** What the gateway answers to a tenant command. */
export const tenantAnswerSchema = z
  .object({ tenant: tenantSchema, version: z.number().int(), position: positionSchema })
  .meta({ id: 'TenantCommandResult' });

// ---- commands and queries (the subjects the tenant service serves) ----

const withTenantId = <D extends z.ZodType>(data: D) => commandRequest(z.object({ tenantId: tenantIdSchema, data }).strict());

export const tenantRpc = {
  create: command(TENANT_CONTEXT, 'create', { summary: 'Create a tenant (its slug reserved first)', request: commandRequest(createTenantSchema), response: tenantCommandResultSchema }),
  changePlan: command(TENANT_CONTEXT, 'change_plan', { summary: 'Change the plan', request: withTenantId(changePlanSchema), response: tenantCommandResultSchema }),
  updateSettings: command(TENANT_CONTEXT, 'update_settings', { summary: 'Update settings', request: withTenantId(updateSettingsSchema), response: tenantCommandResultSchema }),
  suspend: command(TENANT_CONTEXT, 'suspend', { summary: 'Suspend a tenant', request: withTenantId(suspendTenantSchema), response: tenantCommandResultSchema }),
  reactivate: command(TENANT_CONTEXT, 'reactivate', { summary: 'Reactivate a suspended tenant', request: withTenantId(emptyRequest), response: tenantCommandResultSchema }),
  close: command(TENANT_CONTEXT, 'close', { summary: 'Close a tenant', request: withTenantId(closeTenantSchema), response: tenantCommandResultSchema }),
  rebuildReadModel: command(TENANT_CONTEXT, 'rebuild_read_model', {
    summary: 'Rebuild the tenants read model (same as rebuild_projection of "tenants")',
    request: z.object({}).loose(),
    response: z.object({ position: positionSchema }),
    timeoutMs: 600_000,
  }),
  get: query(TENANT_CONTEXT, 'get', { summary: 'A tenant by id or slug, from the read model (cached)', request: getTenantQuerySchema, response: tenantSchema }),
  list: query(TENANT_CONTEXT, 'list', { summary: 'Tenants in creation order, a page at a time', request: listTenantsQuerySchema, response: tenantPageSchema }),
  current: query(TENANT_CONTEXT, 'current', {
    summary: 'A tenant as its log has it now (for commands of other services that must see a change made a moment ago)',
    request: z.object({ idOrSlug: text().min(1).max(64) }).strict(),
    response: tenantSchema,
  }),
};

// ---- event bodies ----

/**
 * The body of every tenant event type. A body must carry every field named here with its type;
 * a field added later (a compatible change) is allowed without a new schemaVersion.
 */
export const tenantEventSchemas = {
  [tenantEventTypes.created]: z.object({ slug: text(), name: text(), plan: planSchema, quotas: quotasSchema, settings: tenantSettingsViewSchema }),
  [tenantEventTypes.planChanged]: z.object({ plan: planSchema, quotas: quotasSchema, previousPlan: planSchema }),
  [tenantEventTypes.settingsUpdated]: z.object({ changes: tenantSettingsViewSchema.partial(), settings: tenantSettingsViewSchema }),
  [tenantEventTypes.suspended]: z.object({ reason: text({ multiline: true }) }),
  [tenantEventTypes.reactivated]: z.object({}),
  [tenantEventTypes.closed]: z.object({ reason: text({ multiline: true }).optional() }),
} satisfies Record<(typeof tenantEventTypes)[keyof typeof tenantEventTypes], z.ZodType>;

// ---- HTTP routes ----

const tenantIdParams = z.object({ id: z.uuid() }).strict();
const tenantCommand = { tag: 'tenants', params: tenantIdParams, tenantParam: 'id', conditional: true, response: { status: 200, schema: tenantAnswerSchema } } as const;

export const tenantRoutes = routeGroup({
  create: route({
    method: 'POST', path: '/api/v1/tenants', permission: permissions.tenantsCreate, tag: 'tenants', summary: 'Create a tenant',
    body: createTenantSchema, idempotent: true, response: { status: 201, schema: tenantAnswerSchema },
  }),
  list: route({
    method: 'GET', path: '/api/v1/tenants', permission: permissions.tenantsList, tag: 'tenants', summary: 'List tenants (cursor pagination, creation order)',
    query: z
      .object({
        cursor: text().max(200).optional(),
        limit: queryInteger({ min: 1, max: 500 }).default(50),
        status: tenantStatusSchema.optional(),
        consistentWith: consistentWithParam,
      })
      .strict(),
    response: { status: 200, schema: tenantPageSchema },
  }),
  get: route({
    method: 'GET', path: '/api/v1/tenants/{idOrSlug}', permission: permissions.tenantsRead, tenantParam: 'idOrSlug', tag: 'tenants', summary: 'Get a tenant by id or slug',
    params: z.object({ idOrSlug: text().min(1).max(200) }).strict(),
    query: z.object({ consistentWith: consistentWithParam }).strict(),
    response: { status: 200, schema: tenantSchema },
  }),
  changePlan: route({
    ...tenantCommand, method: 'PATCH', path: '/api/v1/tenants/{id}/plan', permission: permissions.tenantsChangePlan,
    summary: 'Change the plan (and quotas for plan "custom")', body: changePlanSchema,
  }),
  updateSettings: route({
    ...tenantCommand, method: 'PATCH', path: '/api/v1/tenants/{id}/settings', permission: permissions.tenantsUpdate,
    summary: 'Update settings (only the named ones change)', body: updateSettingsSchema,
  }),
  suspend: route({
    ...tenantCommand, method: 'POST', path: '/api/v1/tenants/{id}/suspend', permission: permissions.tenantsSuspend,
    summary: 'Suspend a tenant', body: suspendTenantSchema, idempotent: true,
  }),
  reactivate: route({
    ...tenantCommand, method: 'POST', path: '/api/v1/tenants/{id}/reactivate', permission: permissions.tenantsSuspend,
    summary: 'Reactivate a suspended tenant', body: z.object({}).strict().optional(), idempotent: true,
  }),
  close: route({
    ...tenantCommand, method: 'DELETE', path: '/api/v1/tenants/{id}', permission: permissions.tenantsClose,
    summary: 'Close a tenant (final: a closed tenant accepts nothing)', body: closeTenantSchema.optional(),
  }),
});

// The interfaces callers use and the schemas the documents show cannot drift apart (checked by tsc).
const tenantSchemaMatches: SameType<z.output<typeof tenantSchema>, Tenant> = true;
void tenantSchemaMatches;

/** The tenant service's contract (listed from services.manifest.json in services.generated.ts). */
export const tenantContract = serviceContract({
  service: 'tenant',
  routes: { tenants: tenantRoutes },
  rpcs: tenantRpc,
  events: tenantEventSchemas,
  projections: 'dead-letters',
});
