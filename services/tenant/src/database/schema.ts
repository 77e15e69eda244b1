export const TENANT_SCHEMA = 'tenant';
export const TENANT_ROLE = 'keel_tenant';

/**
 * A small pool whose connections carry the cross-tenant scope on every statement: slugs are
 * unique across tenants, and reserving one is then a single round trip.
 */
export const CROSS_TENANT_DS = Symbol('TENANT_CROSS_TENANT_DS');
