import { z } from 'zod';
import { jsonObject, route, routeGroup } from './contract';
import { text } from './text';

const ops = { permission: 'public', tag: 'operations' } as const;

/** Every process's operations routes, and the gateway's documents. */
export const operationsRoutes = routeGroup({
  health: route({ ...ops, method: 'GET', path: '/health', summary: 'Liveness', response: { status: 200, schema: z.object({ status: z.literal('ok') }) } }),
  ready: route({
    ...ops, method: 'GET', path: '/ready', summary: 'Readiness: NATS and Redis reachable',
    response: {
      status: 200,
      schema: z.object({ status: z.enum(['ready', 'not_ready']), checks: z.record(text(), z.unknown()) }).loose(),
      description: 'Ready; 503 with the same body when a dependency is not',
    },
  }),
  metrics: route({ ...ops, method: 'GET', path: '/metrics', summary: 'Prometheus metrics', response: { status: 200, schema: text({ multiline: true }), contentType: 'text/plain; version=0.0.4' } }),
  openapi: route({ ...ops, method: 'GET', path: '/openapi.json', summary: 'This OpenAPI document', response: { status: 200, schema: jsonObject.describe('OpenAPI 3.1 document') } }),
  asyncapi: route({
    ...ops, method: 'GET', path: '/asyncapi.json', summary: 'AsyncAPI 3 document of the event subjects, event types, commands and queries',
    response: { status: 200, schema: jsonObject.describe('AsyncAPI 3.0 document') },
  }),
  docs: route({ ...ops, method: 'GET', path: '/docs', summary: 'API explorer (Swagger UI)', response: { status: 200, schema: text({ multiline: true }), contentType: 'text/html' } }),
  asset: route({
    ...ops, method: 'GET', path: '/docs/assets/{file}', summary: 'API explorer assets', params: z.object({ file: text().max(100) }),
    response: { status: 200, schema: text({ multiline: true }), contentType: 'application/javascript', description: 'A script or stylesheet of the explorer' },
  }),
});
