import { createServer, IncomingMessage, ServerResponse } from 'node:http';
import { AddressInfo, createServer as createTcpServer, Server, Socket } from 'node:net';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

/** A listener on every local address (`::` is dual-stack) that counts the connections made to it. */
async function listen(server: Server) {
  const counts = { connections: 0 };
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    counts.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '::', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    counts,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    }),
  };
}

/**
 * Server-side request forgery through SSO configuration, end to end: a tenant administrator
 * names an issuer, and Keel must not be made to connect inwards (loopback, private, link-local,
 * metadata), be redirected there, post its client secret to another origin, read an endless
 * document, or tell open ports from closed ones. The stack runs with the development setting
 * (KEEL_SSO_ALLOW_HTTP_LOOPBACK) so that a provider on http://127.0.0.1 can send Keel on: even
 * so, nothing but that origin is reached.
 */
describe('SSO outbound fetches are safe', () => {
  const env = isolatedEnv('ssoss');
  const stack = new Stack(env, { KEEL_SSO_ALLOW_HTTP_LOOPBACK: 'true' });
  const closers: (() => Promise<void>)[] = [];
  let operator: ReturnType<typeof httpClient>;
  let tenantId: string;
  /** Where a refused fetch would have gone: it must never see a connection. */
  let target: Awaited<ReturnType<typeof listen>>;
  /** The provider the tenant admin controls, on http://127.0.0.1 (allowed by the development setting). */
  let idp: Awaited<ReturnType<typeof listen>> & { requests: string[] };
  let idpOrigin: string;

  const discovery = (issuer: string, overrides: Record<string, unknown> = {}) => ({
    issuer,
    authorization_endpoint: `${issuer}/authorize`,
    token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`,
    ...overrides,
  });

  const create = (issuer: string, config: Record<string, unknown> = {}) =>
    operator('POST', `/api/v1/tenants/${tenantId}/identity-providers`, {
      body: { type: 'oidc', name: 'Probe', config: { issuer, clientId: 'probe', ...config }, clientSecret: 'the-client-secret' },
    });

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    const tenant = await operator('POST', '/api/v1/tenants', { body: { slug: 'probe', name: 'Probe', plan: 'professional' } });
    expect(tenant.status).toBe(201);
    tenantId = tenant.body.tenant.id;
    await eventually(() => operator('GET', `/api/v1/tenants/${tenantId}?consistentWith=${tenant.body.position}`), (r) => r.status === 200, {
      timeoutMs: 30_000,
      what: 'the tenant in the read model',
    });

    target = await listen(createServer((_req, res) => res.end(JSON.stringify(discovery(`http://127.0.0.1:${target.port}`)))));
    closers.push(target.close);
    const requests: string[] = [];
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      requests.push(req.url!);
      const issuer = `${idpOrigin}${req.url!.replace(/\/\.well-known\/openid-configuration$/, '')}`;
      const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(body === undefined ? undefined : JSON.stringify(body));
      };
      switch (req.url!.split('/')[1]) {
        case 'to-loopback':
          return send(302, undefined, { location: `http://127.0.0.1:${target.port}/.well-known/openid-configuration` });
        case 'to-localhost':
          return send(302, undefined, { location: `https://localhost:${target.port}/.well-known/openid-configuration` });
        case 'to-metadata':
          return send(302, undefined, { location: 'http://169.254.169.254/latest/meta-data/.well-known/openid-configuration' });
        case 'huge': {
          // 20 MiB, announced by no content-length: Keel must stop reading, not buffer it.
          res.writeHead(200, { 'content-type': 'application/json' });
          const chunk = Buffer.alloc(1024 * 1024, 0x20);
          let sent = 0;
          const write = () => {
            while (sent < 20 && res.write(chunk)) sent++;
            if (sent >= 20) res.end();
          };
          res.on('drain', write);
          return write();
        }
        case 'cross-origin':
          return send(200, discovery(issuer, { token_endpoint: `http://127.0.0.1:${target.port}/token`, jwks_uri: `http://127.0.0.1:${target.port}/jwks` }));
        default:
          return send(200, discovery(issuer));
      }
    };
    idp = { ...(await listen(createServer(handler))), requests };
    closers.push(idp.close);
    idpOrigin = `http://127.0.0.1:${idp.port}`;
  });

  afterAll(async () => {
    await Promise.all(closers.map((close) => close()));
    await stack.stop();
    await cleanupEnv(env);
  });

  const expectRefused = async (res: Awaited<ReturnType<typeof operator>>, field: string, what: string) => {
    expect({ what, status: res.status, type: res.headers.get('content-type'), code: res.body.code }).toEqual({
      what,
      status: 400,
      type: expect.stringContaining('application/problem+json'),
      code: 'validation_failed',
    });
    expect({ what, fields: res.body.errors.map((e: { field: string }) => e.field) }).toEqual({ what, fields: [field] });
    // The client secret is never echoed, and nothing tells the network's shape.
    expect(JSON.stringify(res.body)).not.toMatch(/the-client-secret|ECONNREFUSED|ETIMEDOUT|timeout|TLS|certificate|socket|EHOSTUNREACH/i);
  };

  it('refuses issuers on loopback over https, on private, link-local, CGNAT and metadata addresses, and names resolving to loopback: nothing is connected to', async () => {
    const issuers: [string, string][] = [
      [`https://127.0.0.1:${target.port}`, 'https to loopback'],
      [`https://[::1]:${target.port}`, 'https to IPv6 loopback'],
      [`https://[::ffff:127.0.0.1]:${target.port}`, 'IPv4-mapped loopback'],
      [`https://localhost:${target.port}`, 'a name that resolves to loopback'],
      ['https://10.0.0.1', 'RFC 1918'],
      ['https://192.168.1.1', 'RFC 1918'],
      ['https://[fd00::2]', 'unique local IPv6'],
      ['https://169.254.169.254', 'cloud metadata'],
      ['https://[fd00:ec2::254]', 'cloud metadata (IPv6)'],
      ['https://169.254.1.1', 'link-local'],
      ['https://[fe80::1]', 'IPv6 link-local'],
      ['https://100.64.0.1', 'CGNAT'],
      ['https://0.0.0.0', 'unspecified'],
      ['http://192.168.1.1', 'plain http off loopback'],
    ];
    for (const [issuer, what] of issuers) await expectRefused(await create(issuer), 'config.issuer', `${what}: ${issuer}`);
    expect(target.counts.connections).toBe(0);
  });

  it('refuses a discovery document that redirects inwards, is too large, or names endpoints on another origin', async () => {
    for (const path of ['to-loopback', 'to-localhost', 'to-metadata', 'huge']) {
      const res = await create(`${idpOrigin}/${path}`);
      await expectRefused(res, 'config.issuer', path);
      expect(res.body.errors[0].message).toBe('it could not be reached or answered unusably');
    }
    expect(idp.requests).toEqual(expect.arrayContaining(['/to-loopback/.well-known/openid-configuration', '/huge/.well-known/openid-configuration']));

    const cross = await create(`${idpOrigin}/cross-origin`);
    await expectRefused(cross, 'config.endpoints.token', 'a token endpoint on another origin');
    expect(cross.body.detail).toContain(`token_endpoint on another origin (http://127.0.0.1:${target.port})`);
    // Named in the configuration, the endpoints are the administrator's choice (and still fetched through the same guard).
    const named = await create(`${idpOrigin}/cross-origin`, {
      endpoints: { token: `http://127.0.0.1:${target.port}/token`, jwks: `http://127.0.0.1:${target.port}/jwks` },
    });
    expect(named.status).toBe(201);
    const badEndpoint = await create(`${idpOrigin}/plain`, { endpoints: { token: 'https://169.254.169.254/token' } });
    await expectRefused(badEndpoint, 'config.endpoints.token', 'a configured endpoint on a metadata address');
    expect(target.counts.connections).toBe(0);
  });

  it('answers a closed port, a silent one and one that speaks something else alike', async () => {
    const closed = await listen(createTcpServer());
    await closed.close();
    const silent = await listen(createTcpServer(() => undefined));
    const garbage = await listen(createTcpServer((socket) => socket.end('SSH-2.0-OpenSSH_9.6\r\n')));
    closers.push(silent.close, garbage.close);
    const answers = new Set<string>();
    for (const port of [closed.port, silent.port, garbage.port]) {
      const res = await create(`http://127.0.0.1:${port}`);
      await expectRefused(res, 'config.issuer', `port ${port}`);
      answers.add(JSON.stringify({ ...res.body, instance: undefined, correlationId: undefined, traceId: undefined }).replaceAll(String(port), 'PORT'));
    }
    expect(answers.size).toBe(1);
  });
});
