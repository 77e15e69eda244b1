/**
 * Every permission a route can require, as `resource:action`, and the system roles that
 * bundle them. Tenants will define custom roles from the same catalogue.
 */
export const permissions = {
  tenantsRead: 'tenants:read',
  tenantsList: 'tenants:list',
  tenantsCreate: 'tenants:create',
  tenantsUpdate: 'tenants:update',
  tenantsChangePlan: 'tenants:change_plan',
  tenantsSuspend: 'tenants:suspend',
  tenantsClose: 'tenants:close',
  usersRead: 'users:read',
  usersWrite: 'users:write',
  /** Removing a user's second factor (and ending their sessions), for a user who lost it. */
  usersResetMfa: 'users:reset_mfa',
  /** A copy of everything Keel holds about a person (GDPR Art. 15 and 20). */
  usersExportPersonalData: 'users:export-personal-data',
  /** Erasing a person (GDPR Art. 17): their data key, credentials and sessions; final. */
  usersErase: 'users:erase',
  rolesRead: 'roles:read',
  rolesWrite: 'roles:write',
  sessionsRead: 'sessions:read',
  sessionsRevoke: 'sessions:revoke',
  apiKeysRead: 'api_keys:read',
  apiKeysWrite: 'api_keys:write',
  auditRead: 'audit:read',
  auditVerify: 'audit:verify',
  budgetsRead: 'budgets:read',
  budgetsWrite: 'budgets:write',
  /** Reporting usage records (an AI gateway or product, usually with an API key). */
  usageWrite: 'usage:write',
  /** Usage and cost reports of the tenant. */
  usageRead: 'usage:read',
  /** Reading the prices that rate the tenant's usage. */
  pricesRead: 'prices:read',
  /** Publishing prices (the platform list and tenants' negotiated rates) and re-rating: platform administrators. */
  pricesWrite: 'prices:write',
  /** Webhook subscriptions and their deliveries. */
  webhooksRead: 'webhooks:read',
  webhooksWrite: 'webhooks:write',
  /** A tenant's invoices and seats. */
  invoicesRead: 'invoices:read',
  /** Closing periods, finalizing and voiding invoices: platform administrators (who issue them). */
  invoicesWrite: 'invoices:write',
  gpuAllocate: 'gpu:allocate',
  platformOperate: 'platform:operate',
  /** Acting in any tenant, not only one's own: platform administrators only. */
  platformCrossTenant: 'platform:cross_tenant',
} as const;

export type Permission = (typeof permissions)[keyof typeof permissions];
export const allPermissions: readonly Permission[] = Object.values(permissions);

const P = permissions;

/** System roles (the enterprise guides' set); a role never grants what its holder lacks. */
export const systemRoles = {
  platform_admin: allPermissions,
  tenant_admin: [
    P.tenantsRead, P.tenantsUpdate, P.usersRead, P.usersWrite, P.usersResetMfa, P.usersExportPersonalData, P.usersErase, P.rolesRead, P.rolesWrite, P.sessionsRead,
    P.sessionsRevoke, P.apiKeysRead, P.apiKeysWrite, P.auditRead, P.budgetsRead, P.budgetsWrite, P.gpuAllocate,
    P.usageWrite, P.usageRead, P.pricesRead, P.webhooksRead, P.webhooksWrite, P.invoicesRead,
  ],
  security_auditor: [P.tenantsRead, P.usersRead, P.rolesRead, P.sessionsRead, P.apiKeysRead, P.auditRead, P.auditVerify],
  billing_manager: [P.tenantsRead, P.budgetsRead, P.budgetsWrite, P.usageRead, P.pricesRead, P.webhooksRead, P.webhooksWrite, P.invoicesRead],
  team_lead: [P.tenantsRead, P.usersRead, P.rolesRead, P.apiKeysRead, P.apiKeysWrite, P.gpuAllocate],
  developer: [P.tenantsRead, P.apiKeysRead, P.apiKeysWrite, P.gpuAllocate],
  viewer: [P.tenantsRead, P.usersRead, P.rolesRead],
} as const satisfies Record<string, readonly Permission[]>;

export type SystemRole = keyof typeof systemRoles;
export const systemRoleNames = Object.keys(systemRoles) as SystemRole[];

/** The permissions a set of roles grants. */
export function permissionsOf(roles: readonly string[]): Set<Permission> {
  const out = new Set<Permission>();
  for (const role of roles) for (const p of (systemRoles as Record<string, readonly Permission[]>)[role] ?? []) out.add(p);
  return out;
}
