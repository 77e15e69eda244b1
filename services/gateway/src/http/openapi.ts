import { Controller, Get, Injectable, OnModuleInit, RequestMethod, Res } from '@nestjs/common';
import { METHOD_METADATA, PATH_METADATA } from '@nestjs/common/constants';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { FastifyReply } from 'fastify';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { text } from '@keel/contracts';
import { ENDPOINT, Endpoint, EndpointSpec, Input, ValidInput } from './endpoint';
import { responseSchemas } from './openapi-components';

type JsonSchema = Record<string, unknown>;

const toSchema = (schema: z.ZodType): JsonSchema => {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  return rest;
};

function parameters(schema: z.ZodType | undefined, where: 'query' | 'path'): JsonSchema[] {
  if (!schema) return [];
  const json = toSchema(schema) as { properties?: Record<string, JsonSchema>; required?: string[] };
  return Object.entries(json.properties ?? {}).map(([name, s]) => ({
    name,
    in: where,
    required: where === 'path' || (json.required ?? []).includes(name),
    schema: s,
    ...(s.description ? { description: s.description } : {}),
  }));
}

const problemRef = { description: 'Problem (RFC 9457)', content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } } };

/** Builds the OpenAPI 3.1 document from the routes' own declarations, so it cannot drift. */
@Injectable()
export class OpenApiDocument implements OnModuleInit {
  document: JsonSchema = {};

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
  ) {}

  onModuleInit(): void {
    const paths: Record<string, Record<string, unknown>> = {};
    for (const wrapper of this.discovery.getControllers()) {
      const type = wrapper.metatype as (new (...args: never[]) => unknown) | undefined;
      if (!type || !wrapper.instance) continue;
      const base = String(this.reflector.get<string>(PATH_METADATA, type) ?? '');
      const proto = Object.getPrototypeOf(wrapper.instance);
      for (const name of this.scanner.getAllMethodNames(proto)) {
        const handler = proto[name];
        const spec = this.reflector.get<EndpointSpec | undefined>(ENDPOINT, handler);
        const method = this.reflector.get<RequestMethod | undefined>(METHOD_METADATA, handler);
        if (!spec || method === undefined) continue;
        const sub = String(this.reflector.get<string>(PATH_METADATA, handler) ?? '');
        const path = `/${[base, sub].filter((p) => p && p !== '/').join('/')}`.replace(/\/+/g, '/').replace(/:([A-Za-z]+)/g, '{$1}');
        const status = String(spec.status ?? 200);
        const headers = [
          ...(spec.idempotent ? [{ name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', maxLength: 255 } }] : []),
          ...(spec.conditional ? [{ name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'Expected version; 412 when stale' }] : []),
        ];
        (paths[path] ??= {})[RequestMethod[method].toLowerCase()] = {
          summary: spec.summary,
          tags: [spec.tag],
          operationId: `${spec.tag}.${name}`,
          'x-permission': spec.permission,
          ...(spec.permission === 'public' ? { security: [] } : {}),
          parameters: [...parameters(spec.params, 'path'), ...parameters(spec.query, 'query'), ...headers],
          ...(spec.body ? { requestBody: { required: true, content: { 'application/json': { schema: toSchema(spec.body) } } } } : {}),
          responses: {
            [status]: {
              description: 'Success',
              ...(spec.response ? { content: { 'application/json': { schema: { $ref: `#/components/schemas/${spec.response}` } } } } : {}),
            },
            ...(spec.permission === 'public' ? {} : { '400': problemRef, '401': problemRef, '403': problemRef }),
            ...(spec.permission === 'public' ? {} : { '404': problemRef, '409': problemRef, '503': problemRef }),
            ...(spec.conditional ? { '412': problemRef } : {}),
          },
        };
      }
    }
    this.document = {
      openapi: '3.1.0',
      info: {
        title: 'Keel API',
        version: '1.0.0',
        description: 'Control plane for enterprise AI platforms. Errors are application/problem+json (RFC 9457) with a stable `code`.',
      },
      servers: [{ url: '/' }],
      security: [{ bearer: [] }],
      paths,
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
        schemas: Object.fromEntries(Object.entries(responseSchemas).map(([k, s]) => [k, toSchema(s)])),
      },
    };
  }
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

@Controller()
export class OpenApiController {
  constructor(private readonly doc: OpenApiDocument) {}

  @Get('openapi.json')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'This OpenAPI document' })
  openapi() {
    return this.doc.document;
  }

  @Get('docs')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'API explorer (Swagger UI)' })
  docs(@Res({ passthrough: true }) reply: FastifyReply) {
    void reply.type('text/html; charset=utf-8');
    return docsPage;
  }

  @Get('docs/assets/:file')
  @Endpoint({ permission: 'public', tag: 'operations', summary: 'API explorer assets', params: z.object({ file: text().max(100) }) })
  asset(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, { file: string }>) {
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
