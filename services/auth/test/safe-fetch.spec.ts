import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo, createServer as createTcpServer, Server as TcpServer, Socket } from 'node:net';
import { OidcClient, ProviderUnusable } from '../src/sso/oidc-client';
import { OutboundError, Resolver, SafeFetch } from '@keel/outbound';

/** A listener that counts every connection made to it (on every local address: `::` is dual-stack). */
async function listener(handler?: (req: IncomingMessage, res: ServerResponse) => void) {
  const server: Server | TcpServer = handler ? createServer(handler) : createTcpServer((socket) => socket.end());
  const counts = { connections: 0, requests: 0 };
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    counts.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  if (handler) server.on('request', () => counts.requests++);
  await new Promise<void>((resolve) => server.listen(0, '::', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    counts,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    }),
  };
}

async function refusal(promise: Promise<unknown>): Promise<OutboundError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof OutboundError) return error;
    throw error;
  }
  throw new Error('expected the fetch to be refused');
}

/** The guarded fetch against real sockets: what it refuses is never connected to. */
describe('SafeFetch', () => {
  const closers: (() => Promise<void>)[] = [];
  afterAll(async () => {
    await Promise.all(closers.map((close) => close()));
  });
  const open = async (handler?: (req: IncomingMessage, res: ServerResponse) => void) => {
    const l = await listener(handler);
    closers.push(l.close);
    return l;
  };
  const client = (options: ConstructorParameters<typeof SafeFetch>[0] = {}) => {
    const c = new SafeFetch({ timeoutMs: 2_000, ...options });
    closers.push(() => c.close());
    return c;
  };
  /** Resolves every name as the map says (the test's stand-in for a DNS answer pointing inwards). */
  const resolver = (answers: Record<string, string[]>): Resolver => async (name) =>
    (answers[name] ?? []).map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));

  it('fetches http from loopback with the development setting, and reads the body', async () => {
    const idp = await open((req, res) => res.end(JSON.stringify({ path: req.url })));
    const res = await client({ allowHttpLoopback: true }).fetch(`http://127.0.0.1:${idp.port}/doc`);
    expect({ status: res.status, body: JSON.parse(res.body.toString()) }).toEqual({ status: 200, body: { path: '/doc' } });
    expect(idp.counts.requests).toBe(1);
  });

  it('refuses loopback without the setting, https to loopback even with it, and names that resolve to loopback: nothing connects', async () => {
    const target = await open();
    const strict = client();
    const dev = client({ allowHttpLoopback: true });
    const hooked = client({ resolve: resolver({ 'idp.example.test': ['127.0.0.1'], 'mixed.example.test': ['93.184.215.14', '::1'], 'mapped.example.test': ['::ffff:127.0.0.1'] }) });
    const cases: [SafeFetch, string, RegExp][] = [
      [strict, `http://127.0.0.1:${target.port}/`, /must be https/],
      [strict, `http://localhost:${target.port}/`, /must be https/],
      [strict, `https://127.0.0.1:${target.port}/`, /loopback address/],
      [strict, `https://[::1]:${target.port}/`, /loopback address/],
      [strict, `https://[::ffff:127.0.0.1]:${target.port}/`, /loopback address/],
      [dev, `https://127.0.0.1:${target.port}/`, /loopback address/],
      // Resolved by the system: localhost is loopback.
      [strict, `https://localhost:${target.port}/`, /localhost resolves to .*, a loopback address/],
      [dev, `https://localhost:${target.port}/`, /localhost resolves to .*, a loopback address/],
      [hooked, `https://idp.example.test:${target.port}/`, /resolves to 127\.0\.0\.1, a loopback address/],
      [hooked, `https://mixed.example.test:${target.port}/`, /resolves to ::1, a loopback address/],
      [hooked, `https://mapped.example.test:${target.port}/`, /resolves to ::ffff:127\.0\.0\.1, a loopback address/],
    ];
    for (const [c, url, detail] of cases) {
      const error = await refusal(c.fetch(url));
      expect({ url, detail: error.detail }).toEqual({ url, detail: expect.stringMatching(detail) });
      expect(error.message).toBe(`the server at ${new URL(url).origin} could not be reached or answered unusably`);
    }
    expect(target.counts.connections).toBe(0);
  });

  it('refuses private, link-local, CGNAT and metadata addresses, as literals and as DNS answers, before connecting', async () => {
    const hooked = client({
      resolve: resolver({
        'private.example.test': ['10.1.2.3'],
        'ula.example.test': ['fd00::2'],
        'link.example.test': ['169.254.10.10'],
        'link6.example.test': ['fe80::1'],
        'cgnat.example.test': ['100.64.0.7'],
        'metadata.example.test': ['169.254.169.254'],
      }),
    });
    const literals: [string, RegExp][] = [
      ['https://10.0.0.1/', /private address/],
      ['https://192.168.0.10/', /private address/],
      ['https://172.20.0.1/', /private address/],
      ['https://[fd00::2]/', /private address/],
      ['https://169.254.1.1/', /link-local address/],
      ['https://[fe80::1]/', /link-local address/],
      ['https://100.64.0.1/', /carrier-grade NAT address/],
      ['https://169.254.169.254/latest/meta-data/', /cloud metadata address/],
      ['https://[fd00:ec2::254]/', /cloud metadata address/],
      ['https://[::ffff:10.0.0.1]/', /private address/],
      ['https://[::ffff:a9fe:a9fe]/', /cloud metadata address/],
    ];
    for (const [url, detail] of literals) {
      expect({ url, detail: (await refusal(hooked.fetch(url))).detail }).toEqual({ url, detail: expect.stringMatching(detail) });
    }
    const names: [string, RegExp][] = [
      ['https://private.example.test/', /resolves to 10\.1\.2\.3, a private address/],
      ['https://ula.example.test/', /resolves to fd00::2, a private address/],
      ['https://link.example.test/', /resolves to 169\.254\.10\.10, a link-local address/],
      ['https://link6.example.test/', /resolves to fe80::1, a link-local address/],
      ['https://cgnat.example.test/', /resolves to 100\.64\.0\.7, a carrier-grade NAT address/],
      ['https://metadata.example.test/', /resolves to 169\.254\.169\.254, a cloud metadata address/],
    ];
    for (const [url, detail] of names) {
      expect({ url, detail: (await refusal(hooked.fetch(url))).detail }).toEqual({ url, detail: expect.stringMatching(detail) });
    }
  });

  it('follows a redirect only as far as each hop is allowed: never to another loopback origin, never from https to http', async () => {
    const target = await open((_req, res) => res.end('{}'));
    const hops: string[] = [];
    const start = await open((req, res) => {
      hops.push(req.url!);
      const to: Record<string, string> = {
        '/same-origin': '/final',
        '/other-port': `http://127.0.0.1:${target.port}/x`,
        '/localhost': `http://localhost:${target.port}/x`,
        '/https-loopback': `https://127.0.0.1:${target.port}/x`,
        '/https-localhost': `https://localhost:${target.port}/x`,
        '/metadata': 'http://169.254.169.254/latest/meta-data/',
        '/loop': '/loop',
      };
      if (to[req.url!]) {
        res.writeHead(302, { location: to[req.url!] });
        return res.end();
      }
      res.end(JSON.stringify({ at: req.url }));
    });
    const dev = client({ allowHttpLoopback: true, maxRedirects: 3 });
    const base = `http://127.0.0.1:${start.port}`;
    const followed = await dev.fetch(`${base}/same-origin`);
    expect({ url: followed.url, body: JSON.parse(followed.body.toString()) }).toEqual({ url: `${base}/final`, body: { at: '/final' } });
    for (const path of ['/other-port', '/localhost', '/https-loopback', '/https-localhost', '/metadata']) {
      const error = await refusal(dev.fetch(`${base}${path}`));
      expect({ path, message: error.message }).toEqual({ path, message: `the server at ${base} could not be reached or answered unusably` });
    }
    expect((await refusal(dev.fetch(`${base}/loop`))).detail).toBe('more than 3 redirects');
    expect(target.counts.connections).toBe(0);
    // A POST is never sent on (it may carry a client secret): the redirect is the answer.
    const posted = await dev.fetch(`${base}/other-port`, { method: 'POST', body: 'secret=1' });
    expect(posted.status).toBe(302);
    expect(target.counts.connections).toBe(0);
  });

  it('aborts a body beyond the size limit, a server too slow, a closed port and a non-HTTP one, all with the same message', async () => {
    const big = await open((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      // No content-length: the limit holds while the body streams.
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const write = () => {
        while (res.write(chunk)) if (res.writableLength > 1 << 20) break;
      };
      write();
      res.on('drain', write);
    });
    const announced = await open((_req, res) => {
      res.writeHead(200, { 'content-length': String(20 * 1024 * 1024) });
      res.write('{');
    });
    const silent = await open(() => undefined);
    const notHttp = await open();
    const closed = await open();
    await closed.close();
    const dev = client({ allowHttpLoopback: true, maxBytes: 512 * 1024, timeoutMs: 1_500 });
    const failures: [number, RegExp][] = [
      [big.port, /sent more than 524288 bytes/],
      [announced.port, /announces 20971520 bytes/],
      [silent.port, /abort|timeout/i],
      [notHttp.port, /./],
      [closed.port, /ECONNREFUSED/],
    ];
    const messages = new Set<string>();
    for (const [port, detail] of failures) {
      const error = await refusal(dev.fetch(`http://127.0.0.1:${port}/.well-known/openid-configuration`));
      expect({ port, detail: error.detail }).toEqual({ port, detail: expect.stringMatching(detail) });
      messages.add(error.message.replace(String(port), 'PORT'));
    }
    expect([...messages]).toEqual(['the server at http://127.0.0.1:PORT could not be reached or answered unusably']);
  });
});

describe('OidcClient configuration checks', () => {
  const strict = new OidcClient({ KEEL_SSO_ALLOW_HTTP_LOOPBACK: false });
  const dev = new OidcClient({ KEEL_SSO_ALLOW_HTTP_LOOPBACK: true });
  let closeServer = async () => undefined as void;
  afterAll(async () => {
    await Promise.all([strict.onModuleDestroy(), dev.onModuleDestroy()]);
    await closeServer();
  });
  const config = (issuer: string, endpoints?: Record<string, string>) => ({ issuer, clientId: 'c', scopes: [], ...(endpoints ? { endpoints } : {}) });

  it('names the field that may not be connected to', () => {
    expect(strict.configProblem(config('http://127.0.0.1:9999'))).toEqual({ field: 'config.issuer', message: expect.stringMatching(/must be https/) });
    expect(dev.configProblem(config('http://127.0.0.1:9999'))).toBeUndefined();
    expect(dev.configProblem(config('https://10.0.0.1'))).toEqual({ field: 'config.issuer', message: expect.stringMatching(/private address/) });
    expect(dev.configProblem(config('https://idp.example.com', { token: 'https://169.254.169.254/token' }))).toEqual({
      field: 'config.endpoints.token',
      message: expect.stringMatching(/cloud metadata address/),
    });
  });

  it('takes the discovery document\'s endpoints only on the issuer\'s origin, unless the configuration names them', async () => {
    const server = createServer((_req, res) => {
      const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      res.end(JSON.stringify({ issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: 'https://elsewhere.example.com/token', jwks_uri: `${issuer}/jwks` }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closeServer = () => new Promise<void>((done) => server.close(() => done()));
    const port = (server.address() as AddressInfo).port;
    const issuer = `http://127.0.0.1:${port}`;
    const refused = await dev.check(config(issuer)).then(() => undefined, (error: unknown) => error);
    expect(refused).toBeInstanceOf(ProviderUnusable);
    expect((refused as ProviderUnusable).field).toBe('config.endpoints.token');
    expect((refused as ProviderUnusable).reason).toMatch(/token_endpoint on another origin \(https:\/\/elsewhere\.example\.com\)/);
    await expect(dev.check(config(issuer, { token: 'https://elsewhere.example.com/token' }))).resolves.toBeUndefined();
    const doc = await dev.discover(issuer);
    expect(dev.endpoints(doc, config(issuer, { token: 'https://elsewhere.example.com/token' }))).toEqual({
      authorization: `${issuer}/authorize`,
      token: 'https://elsewhere.example.com/token',
      jwks: `${issuer}/jwks`,
    });
  });
});
