import { KeelConfig, rolePassword } from '@keel/config';
import { provisionServiceSchema } from '@keel/database';
import { CreateTenants1700000000001 } from './migrations/1700000000001-create-tenants';
import { TenantRls1700000000003 } from './migrations/1700000000003-tenant-rls';
import { TenantProjectionRebuild1700000000005 } from './migrations/1700000000005-tenant-projection-rebuild';
import { TENANT_ROLE, TENANT_SCHEMA } from './schema';

export async function provisionTenant(config: KeelConfig): Promise<void> {
  await provisionServiceSchema(config.DATABASE_URL, {
    schema: TENANT_SCHEMA,
    role: TENANT_ROLE,
    password: rolePassword(config, TENANT_ROLE),
    migrations: [CreateTenants1700000000001, TenantRls1700000000003, TenantProjectionRebuild1700000000005],
  });
}
