export const AUTH_SCHEMA = 'auth';
export const AUTH_ROLE = 'keel_auth';

/**
 * A small pool whose connections carry the cross-tenant scope for every statement: for the
 * refresh path, where the refresh token (not a tenant) finds the session, in one round trip.
 */
export const CROSS_TENANT_DS = Symbol('AUTH_CROSS_TENANT_DS');
