import 'reflect-metadata';
import { RequestMethod } from '@nestjs/common';
import { HTTP_CODE_METADATA, INTERCEPTORS_METADATA, METHOD_METADATA, MODULE_METADATA, PATH_METADATA } from '@nestjs/common/constants';
import { KeelConfig } from '@keel/config';
import { allRoutes, RouteDecl } from '@keel/contracts';
import { Logger } from '@keel/observability';
import { gatewayModule } from '../app.module';
import { directlyServed } from './direct-routes';
import { ENDPOINT } from './endpoint';
import { IdempotencyInterceptor } from './idempotency.interceptor';
import { buildOpenApiDocument } from './openapi';

type Json = Record<string, any>;

interface Served {
  where: string;
  method: string;
  path: string;
  status: number;
  idempotencyInterceptor: boolean;
  decl: RouteDecl | undefined;
}

/** Nest's `api/v1/tenants` + `:id/plan` → `/api/v1/tenants/{id}/plan`. */
const joinPath = (base: string, sub: string) =>
  `/${[base, sub].filter((p) => p && p !== '/').join('/')}`.replace(/\/+/g, '/').replace(/:([A-Za-z_]+)/g, '{$1}');

/** Every handler of every controller the gateway's module registers, as Nest will route it. */
function servedRoutes(): Served[] {
  const module = gatewayModule({} as KeelConfig, {} as Logger);
  const controllers = Reflect.getMetadata(MODULE_METADATA.CONTROLLERS, module) as (new (...args: never[]) => object)[];
  expect(controllers.length).toBeGreaterThan(5);
  const out: Served[] = [];
  for (const controller of controllers) {
    const base = String(Reflect.getMetadata(PATH_METADATA, controller) ?? '');
    const proto = controller.prototype as Record<string, unknown>;
    for (const name of Object.getOwnPropertyNames(proto)) {
      const handler = proto[name];
      if (name === 'constructor' || typeof handler !== 'function') continue;
      const method = Reflect.getMetadata(METHOD_METADATA, handler) as RequestMethod | undefined;
      if (method === undefined) continue;
      const verb = RequestMethod[method];
      const interceptors = (Reflect.getMetadata(INTERCEPTORS_METADATA, handler) ?? []) as unknown[];
      out.push({
        where: `${controller.name}.${name}`,
        method: verb,
        path: joinPath(base, String(Reflect.getMetadata(PATH_METADATA, handler) ?? '')),
        status: (Reflect.getMetadata(HTTP_CODE_METADATA, handler) as number | undefined) ?? (verb === 'POST' ? 201 : 200),
        idempotencyInterceptor: interceptors.includes(IdempotencyInterceptor),
        decl: Reflect.getMetadata(ENDPOINT, handler) as RouteDecl | undefined,
      });
      expect({ where: `${controller.name}.${name}`, name: out[out.length - 1]!.decl?.name }).toEqual({ where: `${controller.name}.${name}`, name });
    }
  }
  // And the routes served on Fastify directly, with the same declarations.
  for (const d of directlyServed()) {
    out.push({ where: `direct ${d.operationId}`, method: d.method, path: d.path, status: d.response.status, idempotencyInterceptor: false, decl: d });
  }
  return out;
}

describe('the routes the gateway serves', () => {
  const served = servedRoutes();
  const declared = allRoutes();

  it('are each served as declared in libs/contracts: method, path, success status, Idempotency-Key handling', () => {
    for (const s of served) {
      expect({ where: s.where, declared: s.decl !== undefined }).toEqual({ where: s.where, declared: true });
      const d = s.decl!;
      // A redirect's status is set by its handler; every other success status is Nest's own.
      const status = d.response.status === 302 ? 302 : s.status;
      expect({ where: s.where, method: s.method, path: s.path, status, idempotent: s.idempotencyInterceptor }).toEqual({
        where: s.where,
        method: d.method,
        path: d.path,
        status: d.response.status,
        idempotent: d.idempotent === true,
      });
    }
  });

  it('cover every declared route, once, and nothing else', () => {
    const key = (r: { method: string; path: string }) => `${r.method} ${r.path}`;
    const servedKeys = served.map(key).sort();
    expect(new Set(servedKeys).size).toBe(servedKeys.length);
    expect(servedKeys).toEqual(declared.map(key).sort());
    expect(new Set(declared.map((d) => d.operationId)).size).toBe(declared.length);
    // The declaration a handler carries is the one for its method and path (not a look-alike).
    for (const s of served) expect(declared).toContain(s.decl);
  });
});

describe('the OpenAPI document', () => {
  const doc = buildOpenApiDocument() as Json;
  const declared = allRoutes();

  it('has an operation for every declared route, with its request and response schemas', () => {
    const ops = Object.entries(doc.paths as Json).flatMap(([path, methods]) => Object.entries(methods as Json).map(([method, op]) => ({ path, method, op: op as Json })));
    expect(ops).toHaveLength(declared.length);
    for (const d of declared) {
      const op = doc.paths[d.path]?.[d.method.toLowerCase()] as Json | undefined;
      const where = `${d.method} ${d.path}`;
      expect({ where, operationId: op?.operationId, permission: op?.['x-permission'] }).toEqual({ where, operationId: d.operationId, permission: d.permission });
      const params = (op!.parameters ?? []) as Json[];
      for (const [schema, where2] of [[d.params, 'path'], [d.query, 'query']] as const) {
        const names = Object.keys((schema as unknown as { shape?: Json } | undefined)?.shape ?? {}).sort();
        expect({ where, in: where2, names: params.filter((p) => p.in === where2).map((p) => p.name).sort() }).toEqual({ where, in: where2, names });
      }
      if (d.body) expect({ where, body: op!.requestBody?.content?.['application/json']?.schema?.type }).toEqual({ where, body: 'object' });
      else expect({ where, body: op!.requestBody }).toEqual({ where, body: undefined });
      const ok = op!.responses[String(d.response.status)] as Json;
      const content = ok?.content?.[d.response.contentType ?? 'application/json'];
      if (d.response.schema) expect({ where, schema: content?.schema !== undefined }).toEqual({ where, schema: true });
      else expect({ where, status: d.response.status, content: ok?.content }).toEqual({ where, status: expect.any(Number), content: undefined });
      expect([204, 302, ...(d.response.schema ? [d.response.status] : [])]).toContain(d.response.status);
      if (d.idempotent) expect(params.map((p) => p.name)).toContain('Idempotency-Key');
      if (d.conditional) expect(params.map((p) => p.name)).toContain('If-Match');
    }
  });

  it('keeps request schemas inline (only answers are shared components) and resolves every reference', () => {
    const refs = new Set<string>();
    const walk = (v: unknown, inRequest: boolean, where: string): void => {
      if (Array.isArray(v)) return v.forEach((x) => walk(x, inRequest, where));
      if (!v || typeof v !== 'object') return;
      for (const [k, x] of Object.entries(v as Json)) {
        if (k === '$ref') {
          expect({ where, inRequest }).toEqual({ where, inRequest: false });
          refs.add(String(x));
        } else walk(x, inRequest || k === 'requestBody' || k === 'parameters', where);
      }
    };
    for (const [path, methods] of Object.entries(doc.paths as Json)) walk(methods, false, path);
    walk(doc.components.schemas, false, 'components');
    expect(refs.size).toBeGreaterThan(5);
    for (const ref of refs) expect(doc.components.schemas[ref.replace('#/components/schemas/', '')]).toBeDefined();
  });
});
