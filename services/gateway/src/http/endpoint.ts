import { SetMetadata, createParamDecorator, ExecutionContext } from '@nestjs/common';
import { RouteDecl } from '@keel/contracts';

export const ENDPOINT = 'keel:endpoint';

/** A declared path as the router takes it (Fastify's, which Nest's is): `/api/v1/tenants/{id}` → `/api/v1/tenants/:id`. */
export const routerPath = (path: string) => path.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, ':$1');

/**
 * What a route needs and accepts: its declaration in `libs/contracts` (permission, tenant
 * parameter, schemas, response, idempotent, conditional). The guard and the validator read it;
 * the OpenAPI document is built from the same declarations.
 */
export type EndpointSpec = RouteDecl;

/**
 * Serves a declared route: `@Endpoint(routes.tenants.create)`. The Nest method decorator
 * (`@Post()`, …) must give the declaration's method and path (a unit test checks every controller).
 */
export const Endpoint = (route: RouteDecl) => SetMetadata(ENDPOINT, route);

export interface ValidInput<B = unknown, Q = unknown, P = unknown> {
  body: B;
  query: Q;
  params: P;
}

/** The request's body, query and path parameters, as validated against the endpoint's schemas. */
export const Input = createParamDecorator((_: unknown, ctx: ExecutionContext) => ctx.switchToHttp().getRequest().valid);
