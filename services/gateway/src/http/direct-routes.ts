import { FastifyInstance, FastifyReply } from 'fastify';
import { RouteDecl, RouteInput, routes, Tenant } from '@keel/contracts';
import { Logger } from '@keel/observability';
import { TenantDirectory } from '../tenants/tenant-directory';
import { Admission } from './admission';
import { routerPath } from './endpoint';
import { answerProblem } from './problem';
import { KeelRequest } from './request-context';

/** An answer already serialised as JSON text (sent as it is, `application/json`). */
export class JsonText {
  constructor(readonly text: string) {}
}

/**
 * A route served on Fastify directly rather than through Nest: the same declaration, the same
 * admission (Admission: identity, permission, tenant, rate limit, validation), the same problem
 * answers, without Nest's router, guard, pipe and interceptor layers per request. For hot reads
 * whose work is an in-memory lookup, those layers cost more than the lookup (see the README's
 * Performance section). `handle` gets the validated input; it may answer at once or with a promise.
 */
export interface DirectRoute<D extends RouteDecl = RouteDecl> {
  route: D;
  handle(input: RouteInput<D>, req: KeelRequest, reply: FastifyReply): unknown;
}

const direct = <D extends RouteDecl>(route: D, handle: DirectRoute<D>['handle']): DirectRoute => ({ route, handle } as DirectRoute);

/**
 * The routes the gateway serves directly, by declaration. The route-coverage test counts them
 * with the Nest controllers' routes: every declared route is served once, by one or the other.
 */
export function directRoutes(d: { directory: TenantDirectory }): DirectRoute[] {
  return [
    direct(routes.tenants.get, (input, _req, reply) => {
      const answer = (tenant: Tenant) => {
        void reply.header('etag', `"${tenant.version}"`);
        return new JsonText(d.directory.json(tenant));
      };
      const { idOrSlug } = input.params;
      const held = input.query.consistentWith === undefined ? d.directory.cached(idOrSlug) : undefined;
      return held ? answer(held) : d.directory.get(idOrSlug, input.query.consistentWith).then(answer);
    }),
  ];
}

/** The route declarations `directRoutes` serves (for the route-coverage test, without a gateway). */
export const directlyServed = (): RouteDecl[] => directRoutes({ directory: undefined as never }).map((r) => r.route);

/** Registers each direct route on the gateway's Fastify instance. */
export function registerDirectRoutes(fastify: FastifyInstance, o: { admission: Admission; logger: Logger; routes: DirectRoute[] }): void {
  for (const { route, handle } of o.routes) {
    // The Idempotency-Key handling is a Nest interceptor: a route that needs it is not a direct one.
    if (route.idempotent) throw new Error(`${route.operationId} takes an Idempotency-Key: serve it through Nest, not directly.`);
    const send = (reply: FastifyReply, body: unknown): FastifyReply => {
      void reply.code(route.response.status);
      if (body instanceof JsonText) return reply.type('application/json; charset=utf-8').send(body.text);
      return reply.send(body);
    };
    const fail = (req: KeelRequest, reply: FastifyReply, exception: unknown): FastifyReply => {
      answerProblem(reply, exception, req.url, o.logger);
      return reply;
    };
    const answer = (req: KeelRequest, reply: FastifyReply): FastifyReply | Promise<FastifyReply> => {
      const body = handle(req.valid as never, req, reply);
      return body instanceof Promise ? body.then((b) => send(reply, b)) : send(reply, body);
    };
    fastify.route({
      method: route.method,
      url: routerPath(route.path),
      // Whatever Fastify itself raises for this route is answered as every other problem is.
      errorHandler: (error, request, reply) => void fail(request as KeelRequest, reply, error),
      handler: (request, reply) => {
        const req = request as KeelRequest;
        // An empty path parameter (`/api/v1/tenants/`) is no route, before anything else, as Nest answers it.
        for (const value of Object.values(req.params as Record<string, string>)) if (value === '') return reply.callNotFound();
        try {
          // Synchronous throughout when admission and handler need not wait; any failure, thrown or rejected, is its problem.
          const admitted = o.admission.admit(route, req, reply);
          const answered = admitted ? admitted.then(() => answer(req, reply)) : answer(req, reply);
          return answered instanceof Promise ? answered.catch((e) => fail(req, reply, e)) : answered;
        } catch (e) {
          return fail(req, reply, e);
        }
      },
    });
  }
}
