import { createServer, Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import { cleanupEnv, freePort, httpClient, isolatedEnv, Stack } from '@keel/testing';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  service: string;
}

/** A minimal OTLP/HTTP (JSON) receiver: what the services export lands here. */
function otlpReceiver(spans: Span[]): Server {
  return createServer((req, res) => {
    let text = '';
    req.on('data', (c) => (text += c));
    req.on('end', () => {
      const body = JSON.parse(text || '{}');
      for (const rs of body.resourceSpans ?? []) {
        const service = rs.resource?.attributes?.find((a: { key: string }) => a.key === 'service.name')?.value?.stringValue;
        for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) spans.push({ ...s, service });
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
}

describe('tracing', () => {
  const env = isolatedEnv('tracing');
  const spans: Span[] = [];
  const receiver = otlpReceiver(spans);
  let stack: Stack;

  beforeAll(async () => {
    const port = await freePort();
    await new Promise<void>((r) => receiver.listen(port, '127.0.0.1', r));
    stack = new Stack(env, { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}` });
    await stack.start('audit', 'tenant', 'gateway');
  });

  afterAll(async () => {
    await stack?.stop();
    receiver.close();
    await cleanupEnv(env);
  });

  it('one HTTP request is one trace through the gateway, the tenant service and the audit consumer', async () => {
    const traceId = randomBytes(16).toString('hex');
    const http = httpClient(stack.gatewayUrl, stack.token);
    const res = await http('POST', '/api/v1/tenants', {
      body: { slug: 'traced-co', name: 'Traced', plan: 'starter' },
      headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01` },
    });
    expect(res.status).toBe(201);
    const services = () => new Set(spans.filter((s) => s.traceId === traceId).map((s) => s.service));
    for (let i = 0; i < 100 && services().size < 3; i++) await new Promise((r) => setTimeout(r, 100));
    expect([...services()].sort()).toEqual(['keel-audit', 'keel-gateway', 'keel-tenant']);
    const trace = spans.filter((s) => s.traceId === traceId);
    const ids = new Set(trace.map((s) => s.spanId));
    const ledgerSpan = trace.find((s) => s.service === 'keel-audit' && s.name === 'consume audit-ledger');
    expect(ledgerSpan).toBeDefined();
    expect(ids.has(ledgerSpan!.parentSpanId!)).toBe(true);
    const commandSpan = trace.find((s) => s.service === 'keel-tenant' && s.name === 'cmd.tenant.create');
    expect(commandSpan).toBeDefined();
    expect(ids.has(commandSpan!.parentSpanId!)).toBe(true);
  });
});
