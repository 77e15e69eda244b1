import { CreateTenants1700000000001 } from './1700000000001-create-tenants';
import { TenantRls1700000000003 } from './1700000000003-tenant-rls';
import { TenantProjectionRebuild1700000000005 } from './1700000000005-tenant-projection-rebuild';

/** The tenant schema's migrations, in the order the provisioning step runs them. */
export const TENANT_MIGRATIONS = [CreateTenants1700000000001, TenantRls1700000000003, TenantProjectionRebuild1700000000005];
