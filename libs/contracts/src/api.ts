import { auditRoutes, auditRpc } from './audit';
import { authRoutes, authRpc, rbacRoutes, tenantIdentityRoutes } from './auth';
import { RouteDecl, RpcDecl } from './contract';
import { operationsRoutes } from './operations';
import { adminRoutes, projectionRpc } from './projections';
import { ssoRoutes, ssoRpc } from './sso';
import { tenantRoutes, tenantRpc } from './tenant';

/**
 * Every HTTP route of the gateway, by group (a group is what one controller serves):
 * `@Endpoint(routes.tenants.create)`.
 */
export const routes = {
  tenants: tenantRoutes,
  audit: auditRoutes,
  admin: adminRoutes,
  auth: authRoutes,
  tenantIdentity: tenantIdentityRoutes,
  rbac: rbacRoutes,
  sso: ssoRoutes,
  operations: operationsRoutes,
};

const pick = <T extends Record<string, RpcDecl>>(all: T, kind: RpcDecl['kind']) =>
  Object.fromEntries(Object.entries(all).filter(([, d]) => d.kind === kind)) as T;

/**
 * Every command and query subject, by service: `rpc.call(commands.tenant.create, payload)`.
 * (`commands` and `queries` are the same declarations split by kind; `rpcs` has them all.)
 */
export const rpcs = {
  tenant: { ...tenantRpc, ...projectionRpc.tenant },
  auth: { ...authRpc, ...ssoRpc, ...projectionRpc.auth },
  audit: { ...auditRpc, ...projectionRpc.audit },
};

type OfKind<T, K> = { [S in keyof T]: { [N in keyof T[S] as T[S][N] extends { kind: K } ? N : never]: T[S][N] } };

export const commands = {
  tenant: pick(rpcs.tenant, 'command'),
  auth: pick(rpcs.auth, 'command'),
  audit: pick(rpcs.audit, 'command'),
} as unknown as OfKind<typeof rpcs, 'command'>;

export const queries = {
  tenant: pick(rpcs.tenant, 'query'),
  auth: pick(rpcs.auth, 'query'),
  audit: pick(rpcs.audit, 'query'),
} as unknown as OfKind<typeof rpcs, 'query'>;

/** Every declared route, once. */
export function allRoutes(): RouteDecl[] {
  return Object.values(routes).flatMap((group) => Object.values(group) as RouteDecl[]);
}

/** Every declared command and query subject, once. */
export function allRpcs(): RpcDecl[] {
  return Object.values(rpcs).flatMap((service) => Object.values(service) as RpcDecl[]);
}
