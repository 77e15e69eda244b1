import { Controller, Delete, Get, HttpCode, Inject, Patch, Post, Put, Req, Res, Type, UseInterceptors } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { ForwardContext, RouteDecl, RouteInput } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input, routerPath } from './endpoint';
import { IdempotencyInterceptor } from './idempotency.interceptor';
import { commandMeta, KeelRequest } from './request-context';

const METHOD = { GET: Get, POST: Post, PUT: Put, PATCH: Patch, DELETE: Delete } as const;

/** What a forwarded route's subject is sent: the declaration's own mapping, or the default one. */
export function forwardedRequest(route: RouteDecl, input: RouteInput<RouteDecl>, caller: ForwardContext): unknown {
  const forward = route.forward!;
  if (forward.request) return forward.request(input as never, caller);
  const params = (input.params ?? {}) as Record<string, unknown>;
  // Path parameters last: a query string can never replace the tenant (or anything) the path names
  // and the guard checked; and only a declared query is forwarded.
  if (forward.rpc.kind === 'query') return { ...(route.query ? (input.query as Record<string, unknown>) : {}), ...params };
  const meta = forward.withPermissions ? { ...caller.meta, permissions: caller.permissions } : caller.meta;
  return { meta, payload: route.body && input.body !== undefined ? { ...params, data: input.body } : params };
}

function callerOf(req: KeelRequest): ForwardContext {
  const p = req.principal;
  // A public route has no caller (only queries are forwarded from one: see below); it holds nothing.
  if (!p) return { meta: { actor: { kind: 'system', id: 'anonymous' }, correlationId: req.correlationId! }, permissions: [], tenantId: '', crossTenant: false };
  return { meta: commandMeta(req), permissions: p.permissions === '*' ? '*' : [...p.permissions], tenantId: p.tenantId, crossTenant: p.crossTenant };
}

/**
 * The gateway serves every route declared with `forward` by itself: one controller per route
 * group, one method per route (named as the route), decorated as a hand-written controller would
 * be (`@Get(path)`, `@HttpCode`, `@Endpoint(route)`, the Idempotency-Key interceptor), so the
 * guard, the validator, the problem filter and the route-coverage test treat both alike. A new
 * service's routes are served without any gateway code.
 */
export function forwardedRouteControllers(groups: Record<string, Record<string, RouteDecl>>): Type[] {
  const controllers: Type[] = [];
  for (const [group, decls] of Object.entries(groups)) {
    const forwarded = Object.values(decls).filter((d) => d.forward);
    if (!forwarded.length) continue;

    class ForwardedRoutes {
      constructor(@Inject(TypedRpc) readonly rpc: TypedRpc) {}
    }
    Object.defineProperty(ForwardedRoutes, 'name', { value: `Forwarded${group[0]!.toUpperCase()}${group.slice(1)}Routes` });
    const proto = ForwardedRoutes.prototype as unknown as Record<string, unknown>;

    for (const route of forwarded) {
      if (route.permission === 'public' && route.forward!.rpc.kind === 'command') {
        throw new Error(`${route.operationId} forwards to the command ${route.forward!.rpc.subject} without a caller: a command needs an actor, so give the route a permission.`);
      }
      async function handler(this: ForwardedRoutes, req: KeelRequest, reply: FastifyReply, input: RouteInput<RouteDecl>): Promise<unknown> {
        const answer = await this.rpc.call(route.forward!.rpc, forwardedRequest(route, input, callerOf(req)) as never);
        if (route.forward!.location) void reply.header('location', route.forward!.location(answer as never));
        if (route.forward!.csv && (input.query as { format?: string } | undefined)?.format === 'csv') {
          const { filename, text } = route.forward!.csv(answer as never);
          void reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="${filename}"`);
          return text;
        }
        return route.response.schema === null ? undefined : answer;
      }
      Object.defineProperty(proto, route.name, { value: handler, writable: true, configurable: true, enumerable: false });
      const descriptor = Object.getOwnPropertyDescriptor(proto, route.name)!;
      METHOD[route.method](routerPath(route.path))(proto, route.name, descriptor);
      HttpCode(route.response.status)(proto, route.name, descriptor);
      Endpoint(route)(proto, route.name, descriptor);
      if (route.idempotent) UseInterceptors(IdempotencyInterceptor)(proto, route.name, descriptor);
      Req()(proto, route.name, 0);
      Res({ passthrough: true })(proto, route.name, 1);
      Input()(proto, route.name, 2);
    }
    Controller()(ForwardedRoutes);
    controllers.push(ForwardedRoutes);
  }
  return controllers;
}
