import { Controller, Get, Injectable, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { createDocument, ZodOpenApiOperationObject, ZodOpenApiPathsObject, ZodOpenApiResponsesObject } from 'zod-openapi';
import { allRoutes, asyncApiDocument, RouteDecl, RouteInput, routes, text } from '@keel/contracts';
import { Endpoint, Input } from './endpoint';

type Json = Record<string, unknown>;

const problem = z
  .object({
    type: text(),
    title: text(),
    status: z.number().int(),
    detail: text({ multiline: true }),
    instance: text(),
    code: text().describe('stable error code'),
    errors: z.array(z.object({ field: text(), in: z.enum(['body', 'query', 'path', 'header']).optional(), message: text({ multiline: true }) })).optional(),
    traceId: text().optional(),
  })
  .meta({ id: 'Problem', description: 'Problem (RFC 9457)' });
const problemResponse = { description: 'Problem (RFC 9457)', content: { 'application/problem+json': { schema: problem } } };

/** A body schema that accepts `undefined` is an optional body; the document shows what it holds when sent. */
function bodyOf(route: RouteDecl): { schema: z.ZodType; required: boolean } | undefined {
  if (!route.body) return undefined;
  const required = !route.body.safeParse(undefined).success;
  const schema = route.body instanceof z.ZodOptional ? (route.body.unwrap() as z.ZodType) : route.body;
  return { schema, required };
}

function headersOf(route: RouteDecl): z.ZodObject | undefined {
  const shape: Record<string, z.ZodType> = {};
  if (route.idempotent) shape['Idempotency-Key'] = text().max(255).optional().describe('Retry safely: the key (per tenant and route) becomes the command id; a retry answers the first outcome');
  if (route.conditional) shape['If-Match'] = text().optional().describe('Expected version; 412 when stale');
  return Object.keys(shape).length ? z.object(shape) : undefined;
}

function operationOf(route: RouteDecl): ZodOpenApiOperationObject {
  const ok = route.response;
  const responses: ZodOpenApiResponsesObject = {
    [String(ok.status)]: {
      description: ok.description ?? (ok.schema ? 'Success' : ok.status === 204 ? 'Done; no content' : 'Success'),
      ...(ok.schema ? { content: { [ok.contentType ?? 'application/json']: { schema: ok.schema } } } : {}),
    },
  };
  const isPublic = route.permission === 'public';
  if (route.params || route.query || route.body || !isPublic) responses['400'] = problemResponse;
  if (!isPublic) Object.assign(responses, { '401': problemResponse, '403': problemResponse, '404': problemResponse, '409': problemResponse, '503': problemResponse });
  if (route.conditional) responses['412'] = problemResponse;
  const body = bodyOf(route);
  const header = headersOf(route);
  return {
    operationId: route.operationId,
    summary: route.summary,
    tags: [route.tag],
    'x-permission': route.permission,
    ...(isPublic ? { security: [] } : {}),
    requestParams: {
      ...(route.params ? { path: route.params as z.ZodObject } : {}),
      ...(route.query ? { query: route.query as z.ZodObject } : {}),
      ...(header ? { header } : {}),
    },
    ...(body ? { requestBody: { required: body.required, content: { 'application/json': { schema: body.schema } } } } : {}),
    responses,
  };
}

/**
 * The OpenAPI 3.1 document, built from the route declarations in `libs/contracts` (the same ones the
 * guard, the validator and the controllers use) with zod-openapi, so it cannot drift from what is served.
 */
export function buildOpenApiDocument(): Json {
  const paths: ZodOpenApiPathsObject = {};
  for (const route of allRoutes()) {
    (paths[route.path] ??= {})[route.method.toLowerCase() as 'get'] = operationOf(route);
  }
  return createDocument({
    openapi: '3.1.0',
    info: {
      title: 'Keel API',
      version: '1.0.0',
      description: 'Control plane for enterprise AI platforms. Errors are application/problem+json (RFC 9457) with a stable `code`.',
    },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    paths,
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
  }) as unknown as Json;
}

/** Both documents, built once at start-up. */
@Injectable()
export class ApiDocuments {
  readonly openapi = buildOpenApiDocument();
  readonly asyncapi = asyncApiDocument();
}

const swaggerDir = join(require.resolve('swagger-ui-dist/package.json'), '..');
const assets: Record<string, [string, string]> = {
  'swagger-ui.css': ['text/css', 'swagger-ui.css'],
  'swagger-ui-bundle.js': ['application/javascript', 'swagger-ui-bundle.js'],
};

const docsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>Keel API</title><link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script></body></html>`;
const initScript = `window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#ui', persistAuthorization: true });`;

const r = routes.operations;

@Controller()
export class ApiDocsController {
  constructor(private readonly documents: ApiDocuments) {}

  @Get('openapi.json')
  @Endpoint(r.openapi)
  openapi() {
    return this.documents.openapi;
  }

  @Get('asyncapi.json')
  @Endpoint(r.asyncapi)
  asyncapi() {
    return this.documents.asyncapi;
  }

  @Get('docs')
  @Endpoint(r.docs)
  docs(@Res({ passthrough: true }) reply: FastifyReply) {
    void reply.type('text/html; charset=utf-8');
    return docsPage;
  }

  @Get('docs/assets/:file')
  @Endpoint(r.asset)
  asset(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.asset>) {
    const file = input.params.file;
    if (file === 'init.js') {
      void reply.type('application/javascript');
      return initScript;
    }
    const asset = assets[file];
    if (!asset) {
      void reply.status(404).type('application/problem+json');
      return { type: 'about:blank', title: 'Not found', status: 404, code: 'not_found', detail: `No asset ${file}` };
    }
    void reply.type(asset[0]).header('cache-control', 'public, max-age=86400');
    return readFileSync(join(swaggerDir, asset[1]));
  }
}
