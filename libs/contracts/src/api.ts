import { RouteDecl, RpcDecl, ServiceContract } from './contract';
import { operationsRoutes } from './operations';
import { adminRoutes, deadLetterRpc, projectionOperatorRpc } from './projections';
import { serviceContracts } from './services.generated';

/**
 * Everything below is derived from the backends' contracts (`serviceContracts`, generated from
 * services.manifest.json) and the two groups the gateway itself owns (operations, admin): a new
 * service's contract file and manifest line are all it takes to appear here.
 */
type Contracts = typeof serviceContracts;
type ServiceName = keyof Contracts;
type UnionToIntersection<U> = (U extends unknown ? (k: U) => void : never) extends (k: infer I) => void ? I : never;

/** The service names whose contracts serve the operator subjects for read models. */
export type ProjectionService = { [S in ServiceName]: Contracts[S] extends { projections: string } ? S : never }[ServiceName];

type OperatorRpc<S extends string> = ReturnType<typeof projectionOperatorRpc<S>>;
type DeadLetterRpc<S extends string> = ReturnType<typeof deadLetterRpc<S>>;
type ProjectionRpcOf<S extends ServiceName> = Contracts[S] extends { projections: 'dead-letters' }
  ? OperatorRpc<S> & DeadLetterRpc<S>
  : Contracts[S] extends { projections: 'ledger' }
    ? OperatorRpc<S>
    : Record<never, never>;

const contracts = Object.values(serviceContracts) as ServiceContract[];

function projectionRpcOf(c: ServiceContract): Record<string, RpcDecl> {
  if (c.projections === 'dead-letters') return { ...projectionOperatorRpc(c.service), ...deadLetterRpc(c.service) };
  if (c.projections === 'ledger') return projectionOperatorRpc(c.service);
  return {};
}

/** Every service that answers the read-model operator subjects (`GET /api/v1/admin/projections` asks each). */
export const PROJECTION_SERVICES = contracts.filter((c) => c.projections).map((c) => c.service) as ProjectionService[];

/** The operator subjects per service with read models. The ledger (audit) has no dead letters to retry or skip. */
export const projectionRpc = Object.fromEntries(contracts.filter((c) => c.projections).map((c) => [c.service, projectionRpcOf(c)])) as {
  [S in ProjectionService]: ProjectionRpcOf<S>;
};

function uniqueGroups(): Record<string, Record<string, RouteDecl>> {
  const groups: Record<string, Record<string, RouteDecl>> = {};
  for (const [owner, own] of [...contracts.map((c) => [c.service, c.routes] as const), ['gateway', { admin: adminRoutes, operations: operationsRoutes }] as const]) {
    for (const [name, group] of Object.entries(own)) {
      if (groups[name]) throw new Error(`The route group "${name}" of the ${owner} contract is declared twice; give it another name.`);
      groups[name] = group;
    }
  }
  return groups;
}

/**
 * Every HTTP route of the gateway, by group (a group is what one controller serves, or the
 * gateway forwards by itself): `@Endpoint(routes.tenants.create)`.
 */
export const routes = uniqueGroups() as UnionToIntersection<Contracts[ServiceName]['routes']> & {
  admin: typeof adminRoutes;
  operations: typeof operationsRoutes;
};

/**
 * Every command and query subject, by service: `rpc.call(commands.tenant.create, payload)`.
 * (`commands` and `queries` are the same declarations split by kind; `rpcs` has them all.)
 */
export const rpcs = Object.fromEntries(contracts.map((c) => [c.service, { ...c.rpcs, ...projectionRpcOf(c) }])) as {
  [S in ServiceName]: Contracts[S]['rpcs'] & ProjectionRpcOf<S>;
};

type OfKind<T, K> = { [S in keyof T]: { [N in keyof T[S] as T[S][N] extends { kind: K } ? N : never]: T[S][N] } };

const byKind = (kind: RpcDecl['kind']) =>
  Object.fromEntries(
    Object.entries(rpcs as Record<string, Record<string, RpcDecl>>).map(([service, all]) => [
      service,
      Object.fromEntries(Object.entries(all).filter(([, d]) => d.kind === kind)),
    ]),
  );

export const commands = byKind('command') as OfKind<typeof rpcs, 'command'>;
export const queries = byKind('query') as OfKind<typeof rpcs, 'query'>;

/** Every declared route, once. */
export function allRoutes(): RouteDecl[] {
  return Object.values(routes as Record<string, Record<string, RouteDecl>>).flatMap((group) => Object.values(group));
}

/** Every declared command and query subject, once. */
export function allRpcs(): RpcDecl[] {
  return Object.values(rpcs as Record<string, Record<string, RpcDecl>>).flatMap((service) => Object.values(service));
}
