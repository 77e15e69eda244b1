import { createServer, Server } from 'node:http';
import { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

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
    // A port the system picks as it binds (none picked in advance that another process could take).
    await new Promise<void>((resolve, reject) => {
      receiver.once('error', reject);
      receiver.listen(0, '127.0.0.1', () => {
        receiver.off('error', reject);
        resolve();
      });
    });
    const { port } = receiver.address() as AddressInfo;
    stack = new Stack(env, { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}` });
    await stack.start('audit', 'auth', 'tenant', 'gateway');
  });

  afterAll(async () => {
    await stack?.stop();
    receiver.close();
    await cleanupEnv(env);
  });

  it('one HTTP request is one trace through the gateway, the tenant service (and the data-key owner it asks) and the audit consumer', async () => {
    const traceId = randomBytes(16).toString('hex');
    const http = httpClient(stack.gatewayUrl, stack.token);
    const res = await http('POST', '/api/v1/tenants', {
      body: { slug: 'traced-co', name: 'Traced', plan: 'starter' },
      headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01` },
    });
    expect(res.status).toBe(201);
    // The services export in batches, and one service's spans may come in several exports: wait
    // until everything asserted below has arrived (the spans and their parents), then assert it;
    // on timeout, assert on what did arrive, so the failure says precisely what is missing.
    const traced = () => {
      const trace = spans.filter((s) => s.traceId === traceId);
      const ids = new Set(trace.map((s) => s.spanId));
      return {
        services: [...new Set(trace.map((s) => s.service))].sort(),
        ids,
        ledgerSpan: trace.find((s) => s.service === 'keel-audit' && s.name === 'consume audit-ledger'),
        commandSpan: trace.find((s) => s.service === 'keel-tenant' && s.name === 'cmd.tenant.create'),
        // The tenant service's first seal of the operator's address: it fetches that data key from its owner.
        keySpan: trace.find((s) => s.service === 'keel-auth' && s.name === 'cmd.auth.subject_keys'),
      };
    };
    const { services, ids, ledgerSpan, commandSpan, keySpan } = await eventually(
      async () => traced(),
      (t) =>
        ['keel-audit', 'keel-auth', 'keel-gateway', 'keel-tenant'].every((name) => t.services.includes(name)) &&
        !!t.keySpan && t.ids.has(t.keySpan.parentSpanId!) &&
        !!t.ledgerSpan && t.ids.has(t.ledgerSpan.parentSpanId!) &&
        !!t.commandSpan && t.ids.has(t.commandSpan.parentSpanId!),
      { timeoutMs: 20_000, intervalMs: 100, what: `the spans of trace ${traceId}` },
    ).catch(() => traced());
    expect(services).toEqual(['keel-audit', 'keel-auth', 'keel-gateway', 'keel-tenant']);
    expect(keySpan).toBeDefined();
    expect(ids.has(keySpan!.parentSpanId!)).toBe(true);
    expect(ledgerSpan).toBeDefined();
    expect(ids.has(ledgerSpan!.parentSpanId!)).toBe(true);
    expect(commandSpan).toBeDefined();
    expect(ids.has(commandSpan!.parentSpanId!)).toBe(true);
  });
});
