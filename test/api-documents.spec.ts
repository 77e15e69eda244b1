import { allRoutes, asyncApiDocument, eventSchemas } from '@keel/contracts';
import { cleanupEnv, httpClient, isolatedEnv, Stack } from '@keel/testing';

/** The gateway serves both documents derived from the contract declarations, to anyone. */
describe('the API documents', () => {
  const env = isolatedEnv('apidocs');
  const stack = new Stack(env);
  let anonymous: ReturnType<typeof httpClient>;

  beforeAll(async () => {
    await stack.start('gateway');
    anonymous = httpClient(stack.gatewayUrl);
  });

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('/asyncapi.json is the AsyncAPI 3 document of the declared events and subjects, without signing in', async () => {
    const res = await anonymous('GET', '/asyncapi.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/json');
    expect(res.body.asyncapi).toBe('3.0.0');
    expect(res.body).toEqual(JSON.parse(JSON.stringify(asyncApiDocument())));
    expect(Object.keys(res.body.components.messages)).toEqual(expect.arrayContaining(Object.keys(eventSchemas)));
  });

  it('/openapi.json has every declared route, each with its responses, without signing in', async () => {
    const res = await anonymous('GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe('3.1.0');
    for (const route of allRoutes()) {
      const op = res.body.paths[route.path]?.[route.method.toLowerCase()];
      expect({ route: route.operationId, found: op?.operationId, success: Object.keys(op?.responses ?? {}) }).toEqual({
        route: route.operationId,
        found: route.operationId,
        success: expect.arrayContaining([String(route.response.status)]),
      });
    }
    const docs = await anonymous('GET', '/docs');
    expect(docs.status).toBe(200);
    expect(docs.headers.get('content-type')).toContain('text/html');
  });
});
