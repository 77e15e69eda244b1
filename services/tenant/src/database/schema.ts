export const TENANT_SCHEMA = 'tenant';
export const TENANT_ROLE = 'keel_tenant';
