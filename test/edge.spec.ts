import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer, TLSSocket } from 'node:tls';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

const PASSWORD = 'correct horse battery staple';
const PUBLIC_LIMIT = 10;

/** Sends raw bytes and reads the whole answer until the server closes: status, headers, parsed body. */
function raw(url: string, bytes: string): Promise<{ status: number; headers: Record<string, string>; body: any }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = netConnect(Number(port), hostname, () => socket.end(bytes));
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString()));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head, ...rest] = data.split('\r\n\r\n');
      const [statusLine, ...lines] = head!.split('\r\n');
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const text = rest.join('\r\n\r\n');
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON: left as text, and the expectations say so
      }
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body });
    });
  });
}

const expectProblem = (res: { status: number; headers: Headers | Record<string, string>; body: any }, status: number, code: string) => {
  const type = res.headers instanceof Headers ? res.headers.get('content-type') : res.headers['content-type'];
  expect({ status: res.status, type, code: res.body?.code }).toEqual({ status, type: expect.stringMatching(/^application\/problem\+json/), code });
  expect(res.body).toMatchObject({ status, title: expect.any(String), detail: expect.any(String) });
};

/**
 * Behind a trusted proxy (the test's requests come from 127.0.0.1, configured as the proxy):
 * X-Forwarded-For says who the client is, and the tenant's allowed IP ranges, the sign-in
 * records and the per-address limit on public routes see that client.
 */
describe('edge: behind a trusted proxy', () => {
  const env = isolatedEnv('edgeproxy');
  const stack = new Stack(env, { KEEL_TRUSTED_PROXIES: '127.0.0.0/8', KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: String(PUBLIC_LIMIT) });
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let tenantId: string;
  let position: number;
  let probes = 0;

  const login = (forwardedFor?: string, password = PASSWORD) =>
    anonymous('POST', '/api/v1/auth/login', {
      body: { tenant: 'proxied-co', email: 'user@proxied.test', password },
      ...(forwardedFor ? { headers: { 'x-forwarded-for': forwardedFor } } : {}),
    });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'proxied-co', name: 'Proxied', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenantId = created.body.tenant.id;
    position = created.body.position;
    const user = await operator('POST', `/api/v1/tenants/${tenantId}/users`, { body: { email: 'user@proxied.test', name: 'User', password: PASSWORD, roles: ['viewer'] } });
    expect(user.status).toBe(201);
    const ranges = await operator('PATCH', `/api/v1/tenants/${tenantId}/settings`, { body: { allowedIpRanges: ['203.0.113.0/24'] } });
    expect(ranges.status).toBe(200);
    // Until the ranges reach the identity service: a sign-in from outside (a new address each time, so the per-address limit stays out of it) is refused.
    await eventually(() => login(`198.51.100.${++probes}`), (r) => r.status === 403, { timeoutMs: 20_000, intervalMs: 100, what: 'the ranges applied to sign-in' });
  }, 120_000);

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
  });

  it('refuses a client outside the ranges by its forwarded address and serves one inside', async () => {
    const inside = await login('203.0.113.7');
    expect(inside.status).toBe(200);
    const outside = await login('198.51.100.200');
    expectProblem(outside, 403, 'forbidden');
    expect(outside.body.detail).toContain("tenant's IP ranges");
    // The proxy's own address is outside too: without the header, the peer is the client.
    expect((await login()).status).toBe(403);
    // The rightmost address the trusted proxy did not add is the client: what a client writes
    // to the left of it (a forged inside address) changes nothing, and the other way round.
    expect((await login('203.0.113.7, 198.51.100.201')).status).toBe(403);
    expect((await login('198.51.100.202, 203.0.113.8')).status).toBe(200);

    // Requests with the token are bound by the same ranges, seen by the forwarded address.
    const user = httpClient(stack.gatewayUrl, inside.body.accessToken);
    expect((await user('GET', `/api/v1/tenants/${tenantId}`, { headers: { 'x-forwarded-for': '203.0.113.7' } })).status).toBe(200);
    const refused = await user('GET', `/api/v1/tenants/${tenantId}`, { headers: { 'x-forwarded-for': '198.51.100.203' } });
    expectProblem(refused, 403, 'forbidden');
    expect(refused.body.detail).toContain('Your address 198.51.100.203 is outside');
  });

  it('records a failed sign-in with the forwarded client address (what the per-address lockout counts)', async () => {
    expect((await login('203.0.113.99', 'not the password at all')).status).toBe(401);
    const found = await eventually(
      () => operator('GET', `/api/v1/audit/events?tenantId=${tenantId}&type=auth.user.login_failed&limit=100`),
      (r) => r.status === 200 && JSON.stringify(r.body).includes('203.0.113.99'),
      { timeoutMs: 20_000, intervalMs: 200, what: 'the failed sign-in in the audit trail' },
    );
    expect(JSON.stringify(found.body)).not.toContain('127.0.0.1');
  });

  it('limits each client address on the public routes: 429 problem+json with Retry-After, another client unaffected', async () => {
    const refresh = (ip: string) => anonymous('POST', '/api/v1/auth/refresh', { body: { refreshToken: 'not-a-refresh-token-at-all' }, headers: { 'x-forwarded-for': ip } });
    for (let i = 0; i < PUBLIC_LIMIT; i++) expect((await refresh('192.0.2.50')).status).not.toBe(429);
    const limited = await refresh('192.0.2.50');
    expectProblem(limited, 429, 'rate_limited');
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(limited.headers.get('ratelimit-limit')).toBe(String(PUBLIC_LIMIT));
    // Sign-in shares the address's quota; another address behind the same proxy has its own.
    expect((await login('192.0.2.50')).status).toBe(429);
    expect((await refresh('192.0.2.51')).status).not.toBe(429);
    // Documents and probes are not limited.
    expect((await anonymous('GET', '/.well-known/jwks.json', { headers: { 'x-forwarded-for': '192.0.2.50' } })).status).toBe(200);
  });

  it('answers what the parsers refuse as problem+json with a code and a detail', async () => {
    const post = (options: Parameters<typeof operator>[2]) => operator('POST', '/api/v1/tenants', options);
    expectProblem(await post({ rawBody: '{"slug": "x",' }), 400, 'bad_json');
    expectProblem(await post({ rawBody: JSON.stringify({ slug: 'big-co', name: 'x'.repeat(70 * 1024), plan: 'free' }) }), 413, 'payload_too_large');
    expectProblem(await post({ rawBody: '<tenant slug="x"/>', headers: { 'content-type': 'application/xml' } }), 415, 'unsupported_media_type');
    // Text (and a form) is read, as a string, which is not the object the route takes.
    expectProblem(await post({ rawBody: 'slug=x', headers: { 'content-type': 'text/plain' } }), 400, 'validation_failed');
    expectProblem(await operator('GET', '/api/v1/tenants/%E0%A4%A'), 400, 'validation_failed');
    expectProblem(await operator('GET', '/no/such/route'), 404, 'not_found');
    // Node's own HTTP parser: headers over 16 KiB, and a malformed header line.
    const big = await raw(stack.gatewayUrl, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`);
    expectProblem(big, 431, 'headers_too_large');
    const malformed = await raw(stack.gatewayUrl, 'GET /health HTTP/1.1\r\nHost: x\r\nthis is no header\r\n\r\n');
    expectProblem(malformed, 400, 'validation_failed');
    // The gateway still serves (the parsers closed only those connections).
    expect((await anonymous('GET', '/health')).status).toBe(200);
  });

  it.each(['', '0x10', '1e3', ' 1', '+1', '1.0', '-1'])('refuses consistentWith=%j with 400 naming the parameter', async (value) => {
    const res = await operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${encodeURIComponent(value)}`);
    expectProblem(res, 400, 'validation_failed');
    expect(res.body.errors).toEqual([expect.objectContaining({ in: 'query', field: 'consistentWith', message: expect.stringContaining('plain decimal integer') })]);
  });

  it('refuses the other integer query parameters the same way, and reads plain digits', async () => {
    for (const path of ['/api/v1/tenants?limit=1e1', '/api/v1/audit/events?limit=0x10', `/api/v1/tenants/${tenantId}/users?limit=5.0`, '/api/v1/tenants?limit=5&limit=6']) {
      const res = await operator('GET', path);
      expectProblem(res, 400, 'validation_failed');
      expect(res.body.errors).toEqual([expect.objectContaining({ in: 'query', field: 'limit' })]);
    }
    expect((await operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${position}`)).status).toBe(200);
    expect((await operator('GET', '/api/v1/tenants?limit=2')).body.items.length).toBeLessThanOrEqual(2);
  });
});

/** A GET over https trusting `ca`; resolves with the status, the body and the negotiated protocol. */
function httpsGet(url: string, ca: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: any; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca, headers }, (res) => {
      const protocol = (res.socket as TLSSocket).getProtocol();
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined, protocol }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Whether a TLS 1.1-only client (ciphers allowed down to security level 0) completes a handshake. */
function tls11Handshake(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }, () => {
      resolve(`connected with ${socket.getProtocol()}`);
      socket.destroy();
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(`refused: ${error.code}`));
  });
}

/**
 * TLS on the gateway with a self-signed certificate made here, and proxies configured that do
 * not include the test's 127.0.0.1: a forged X-Forwarded-For is ignored.
 */
describe('edge: TLS, and an untrusted peer', () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-edge-tls-'));
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
  const ca = readFileSync(cert);
  const env = isolatedEnv('edgetls');
  const stack = new Stack(env, { KEEL_TLS_CERT: cert, KEEL_TLS_KEY: key, KEEL_TRUSTED_PROXIES: '10.0.0.0/8,192.168.0.0/16' });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
  }, 120_000);

  afterAll(async () => {
    await stack.stop();
    await cleanupEnv(env);
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves https with TLS 1.3 to a client that trusts the certificate, and TLS 1.2 to one that stops there', async () => {
    // (A plain-http request to the TLS port gets no HTTP answer.)
    expect(stack.gatewayUrl).toMatch(/^https:/);
    const res = await httpsGet(`${stack.gatewayUrl}/health`, ca);
    expect(res).toMatchObject({ status: 200, protocol: 'TLSv1.3' });
    const port = Number(new URL(stack.gatewayUrl).port);
    const tls12 = await new Promise<string | null>((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port, ca, maxVersion: 'TLSv1.2' }, () => {
        resolve(s.getProtocol());
        s.destroy();
      });
      s.on('error', reject);
    });
    expect(tls12).toBe('TLSv1.2');
  });

  it('refuses a TLS 1.1 client (which a server allowing TLS 1.1 accepts)', async () => {
    // The same client against a server that allows TLS 1.1: it can speak it, so a refusal is the gateway's.
    const legacy = createTlsServer({ cert: ca, key: readFileSync(key), minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, (s) => s.end());
    await new Promise<void>((resolve) => legacy.listen(0, '127.0.0.1', resolve));
    try {
      expect(await tls11Handshake((legacy.address() as import('node:net').AddressInfo).port, ca)).toBe('connected with TLSv1.1');
    } finally {
      legacy.close();
    }
    expect(await tls11Handshake(Number(new URL(stack.gatewayUrl).port), ca)).toMatch(/^refused: /);
  });

  it('ignores X-Forwarded-For from a peer that is not a trusted proxy', async () => {
    const json = (method: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: any }>((resolve, reject) => {
        const req = httpsRequest(`${stack.gatewayUrl}${path}`, { method, ca, headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.token}`, ...headers } }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined }));
        });
        req.on('error', reject);
        req.end(JSON.stringify(body));
      });
    const created = await json('POST', '/api/v1/tenants', { slug: 'unproxied-co', name: 'Unproxied', plan: 'professional' });
    expect(created.status).toBe(201);
    const tenantId = created.body.tenant.id;
    expect((await json('POST', `/api/v1/tenants/${tenantId}/users`, { email: 'user@unproxied.test', name: 'User', password: PASSWORD, roles: ['viewer'] })).status).toBe(201);
    expect((await json('PATCH', `/api/v1/tenants/${tenantId}/settings`, { allowedIpRanges: ['203.0.113.0/24'] })).status).toBe(200);
    const login = (forwardedFor: string) => json('POST', '/api/v1/auth/login', { tenant: 'unproxied-co', email: 'user@unproxied.test', password: PASSWORD }, { authorization: '', 'x-forwarded-for': forwardedFor });
    // The forged inside address does not help: the client is 127.0.0.1, outside the ranges.
    const refused = await eventually(() => login('203.0.113.7'), (r) => r.status === 403, { timeoutMs: 20_000, intervalMs: 100, what: 'a forged inside address refused' });
    expect(refused.body).toMatchObject({ code: 'forbidden', detail: expect.stringContaining("tenant's IP ranges") });
    // And from inside (127.0.0.1 allowed), a forged outside address does not lock the client out.
    expect((await json('PATCH', `/api/v1/tenants/${tenantId}/settings`, { allowedIpRanges: ['127.0.0.0/8'] })).status).toBe(200);
    await eventually(() => login('198.51.100.9'), (r) => r.status === 200, { timeoutMs: 20_000, intervalMs: 100, what: 'a forged outside address ignored' });
  });
});
