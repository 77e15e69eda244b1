import { promises as dns } from 'node:dns';
import { isIP, LookupFunction, Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent, buildConnector, Dispatcher, request } from 'undici';

/**
 * Outbound HTTP to addresses a tenant chose (an identity provider's issuer today, a webhook
 * tomorrow), safe against server-side request forgery:
 *
 * - `https` only; plain `http` only to a loopback address, and only when `allowHttpLoopback`
 *   (a development setting) says so, for the origin the fetch began at.
 * - Every address a name resolves to, and the address the socket actually connected to, must
 *   be public unicast: loopback, private (RFC 1918, fc00::/7), link-local, CGNAT, unspecified,
 *   multicast, broadcast, reserved and documentation ranges, cloud metadata addresses and the
 *   IPv4-mapped IPv6 forms of all these are refused. The check runs inside the connection's own
 *   DNS lookup and again on the connected socket, so a name that changes its answer between a
 *   check and the connect (DNS rebinding) gains nothing.
 * - Redirects are followed by hand (GET and HEAD only, at most `maxRedirects`), each hop checked
 *   as the first; never from https to http; credentials are dropped when the origin changes.
 * - One deadline covers every hop and the body; bodies beyond `maxBytes` are aborted.
 * - Every failure is one `OutboundError` whose message names only the origin: whether a port was
 *   closed, a handshake failed or an answer was too slow or too large is kept in `detail`, for
 *   the operator's log, never for the one who chose the URL.
 */

export type AddressClass =
  | 'public'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'carrier-grade NAT'
  | 'unspecified'
  | 'multicast'
  | 'broadcast'
  | 'cloud metadata'
  | 'reserved'
  | 'invalid';

/** Instance-metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS IPv6; ECS; Alibaba). */
const METADATA = ['169.254.169.254', 'fd00:ec2::254', '169.254.170.2', '100.100.100.200'].map((a) => ipaddr.parse(a).toNormalizedString());

const IPV4_CLASSES: Record<string, AddressClass> = {
  unicast: 'public',
  loopback: 'loopback',
  private: 'private',
  linkLocal: 'link-local',
  carrierGradeNat: 'carrier-grade NAT',
  unspecified: 'unspecified',
  multicast: 'multicast',
  broadcast: 'broadcast',
};
const IPV6_CLASSES: Record<string, AddressClass> = {
  unicast: 'public',
  loopback: 'loopback',
  uniqueLocal: 'private',
  linkLocal: 'link-local',
  deprecatedSiteLocal: 'private',
  unspecified: 'unspecified',
  multicast: 'multicast',
};
/** Global unicast (2000::/3): every public IPv6 address today; the rest (IPv4-compatible ::/96 among them) is refused. */
const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR('2000::/3');

/** What kind of address `address` (IPv4 or IPv6, brackets and zone allowed) is; only `public` may be connected to. */
export function classifyAddress(address: string): AddressClass {
  const bare = address.replace(/^\[(.*)\]$/, '$1').replace(/%.*$/, '');
  if (!isIP(bare)) return 'invalid';
  let ip: ipaddr.IPv4 | ipaddr.IPv6 = ipaddr.parse(bare);
  if (ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress()) ip = (ip as ipaddr.IPv6).toIPv4Address();
  if (METADATA.includes(ip.toNormalizedString())) return 'cloud metadata';
  if (ip.kind() === 'ipv4') return IPV4_CLASSES[ip.range()] ?? 'reserved';
  const cls = IPV6_CLASSES[ip.range()] ?? 'reserved';
  return cls === 'public' && !ip.match(GLOBAL_UNICAST_V6) ? 'reserved' : cls;
}

export type Resolver = (hostname: string) => Promise<{ address: string; family: number }[]>;

export interface SafeFetchOptions {
  /** Development only: allow `http://` to a loopback address (localhost, 127.0.0.0/8, ::1). */
  allowHttpLoopback?: boolean;
  /** The setting that allows it, named when a URL is refused for want of it (default KEEL_SSO_ALLOW_HTTP_LOOPBACK). */
  loopbackSetting?: string;
  /** The largest body read (default 512 KiB). */
  maxBytes?: number;
  /** One deadline for every hop and the body (default 4 s). */
  timeoutMs?: number;
  /** Redirects followed for GET and HEAD (default 3). */
  maxRedirects?: number;
  /** How names are resolved (default the system resolver). Tests point names at chosen addresses with it. */
  resolve?: Resolver;
}

export interface SafeRequest {
  method?: 'GET' | 'HEAD' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  /** Only the status matters (a webhook's answer): the body is not read, whatever its size. */
  ignoreBody?: boolean;
}

export interface SafeResponse {
  status: number;
  ok: boolean;
  /** The URL that answered, after redirects. */
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** A fetch that was refused or failed. The message names the origin and nothing else; `detail` is for logs. */
export class OutboundError extends Error {
  constructor(readonly origin: string, readonly detail: string) {
    super(`the server at ${origin} could not be reached or answered unusably`);
    this.name = 'OutboundError';
  }
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'proxy-authorization'];
const defaultResolver: Resolver = (hostname) => dns.lookup(hostname, { all: true, verbatim: true });

const isLoopbackName = (hostname: string) => hostname === 'localhost' || classifyAddress(hostname) === 'loopback';

const originOf = (url: string) => (URL.canParse(url) ? new URL(url).origin : 'an invalid URL');

export class SafeFetch {
  readonly maxBytes: number;
  readonly timeoutMs: number;
  readonly maxRedirects: number;
  readonly allowHttpLoopback: boolean;
  private readonly loopbackSetting: string;
  private readonly resolve: Resolver;
  private readonly publicOnly: Agent;
  private readonly loopbackToo: Agent;

  constructor(options: SafeFetchOptions = {}) {
    this.allowHttpLoopback = options.allowHttpLoopback ?? false;
    this.loopbackSetting = options.loopbackSetting ?? 'KEEL_SSO_ALLOW_HTTP_LOOPBACK';
    this.maxBytes = options.maxBytes ?? 512 * 1024;
    this.timeoutMs = options.timeoutMs ?? 4_000;
    this.maxRedirects = options.maxRedirects ?? 3;
    this.resolve = options.resolve ?? defaultResolver;
    this.publicOnly = this.agent(false);
    this.loopbackToo = this.agent(true);
  }

  /**
   * Why `url` may not be fetched at all, judged without resolving it (scheme, credentials, an
   * address literal); undefined when it may be tried. For configuration-time answers.
   */
  urlProblem(url: string): string | undefined {
    if (!URL.canParse(url)) return 'is not an absolute URL';
    return this.problemOf(new URL(url), this.allowHttpLoopback);
  }

  private problemOf(url: URL, loopbackAllowed: boolean): string | undefined {
    if (url.username || url.password) return 'must not carry credentials';
    const httpLoopback = url.protocol === 'http:' && isLoopbackName(url.hostname);
    if (url.protocol !== 'https:' && !(httpLoopback && loopbackAllowed)) {
      return httpLoopback
        ? `must be https (plain http to a loopback address only with ${this.loopbackSetting}=true, in development)`
        : 'must be https';
    }
    const literal = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (isIP(literal)) {
      const cls = classifyAddress(literal);
      if (cls !== 'public' && !(cls === 'loopback' && httpLoopback && loopbackAllowed)) return `names a ${cls} address, to which Keel does not connect`;
    }
    return undefined;
  }

  private allowed(address: string, loopback: boolean): boolean {
    const cls = classifyAddress(address);
    return cls === 'public' || (loopback && cls === 'loopback');
  }

  /** An agent whose every connection is to allowed addresses: checked in its DNS lookup (before connecting) and on the connected socket. */
  private agent(loopback: boolean): Agent {
    const lookup: LookupFunction = (hostname, options, callback) => {
      this.resolve(hostname).then(
        (found) => {
          const family = options.family === 4 || options.family === 6 ? options.family : undefined;
          const addresses = family ? found.filter((a) => a.family === family) : found;
          const refused = addresses.find((a) => !this.allowed(a.address, loopback));
          if (!addresses.length) return callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' }), '', 0);
          if (refused) return callback(new Error(`${hostname} resolves to ${refused.address}, a ${classifyAddress(refused.address)} address`), '', 0);
          if (options.all) return (callback as unknown as (e: null, a: typeof addresses) => void)(null, addresses);
          return callback(null, addresses[0]!.address, addresses[0]!.family);
        },
        (error: Error) => callback(error as NodeJS.ErrnoException, '', 0),
      );
    };
    const connect = buildConnector({ lookup, timeout: this.timeoutMs });
    return new Agent({
      connect: (opts, callback) =>
        connect(opts, (error, socket) => {
          if (error) return callback(error, null);
          const address = (socket as Socket).remoteAddress;
          if (!address || !this.allowed(address, loopback)) {
            socket!.destroy();
            return callback(new Error(`connected to ${address}, a ${classifyAddress(address ?? '')} address`), null);
          }
          return callback(null, socket!);
        }),
    });
  }

  /** Fetches `url` under the rules above; any refusal or failure is an `OutboundError`. */
  async fetch(url: string, init: SafeRequest = {}): Promise<SafeResponse> {
    const origin = originOf(url);
    if (!URL.canParse(url)) throw new OutboundError(origin, 'not an absolute URL');
    const start = new URL(url);
    const deadline = AbortSignal.timeout(this.timeoutMs);
    let current = start;
    let headers = { ...init.headers };
    const method = init.method ?? 'GET';
    for (let hop = 0; ; hop++) {
      // The development exception holds for the origin the fetch began at, never for where it is sent on to.
      const loopback = this.allowHttpLoopback && current.origin === start.origin;
      const problem = this.problemOf(current, loopback);
      if (problem) throw new OutboundError(origin, `${current.href} ${problem}`);
      let res: Dispatcher.ResponseData;
      try {
        res = await request(current, {
          method,
          headers,
          body: init.body ?? null,
          dispatcher: loopback && current.protocol === 'http:' ? this.loopbackToo : this.publicOnly,
          signal: deadline,
          headersTimeout: this.timeoutMs,
          bodyTimeout: this.timeoutMs,
        });
      } catch (error) {
        throw new OutboundError(origin, `${current.href}: ${describe(error)}`);
      }
      const location = res.headers.location;
      if (REDIRECTS.has(res.statusCode) && typeof location === 'string' && (method === 'GET' || method === 'HEAD')) {
        discard(res);
        if (hop >= this.maxRedirects) throw new OutboundError(origin, `more than ${this.maxRedirects} redirects`);
        if (!URL.canParse(location, current.href)) throw new OutboundError(origin, `${current.href} redirects to an invalid URL`);
        const next = new URL(location, current);
        if (current.protocol === 'https:' && next.protocol !== 'https:') throw new OutboundError(origin, `${current.href} redirects from https to ${next.protocol}`);
        if (next.origin !== current.origin) headers = Object.fromEntries(Object.entries(headers).filter(([k]) => !CREDENTIAL_HEADERS.includes(k.toLowerCase())));
        current = next;
        continue;
      }
      // An ignored body is read and dropped (up to maxBytes, then the connection is cut): the connection is kept for the next request.
      if (init.ignoreBody) await res.body.dump({ limit: this.maxBytes }).catch(() => undefined);
      const body = init.ignoreBody ? Buffer.alloc(0) : await this.read(origin, current, res);
      return { status: res.statusCode, ok: res.statusCode >= 200 && res.statusCode < 300, url: current.href, headers: res.headers, body };
    }
  }

  /** The body, up to `maxBytes`: a longer one is aborted while it streams. */
  private async read(origin: string, url: URL, res: Dispatcher.ResponseData): Promise<Buffer> {
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > this.maxBytes) {
      discard(res);
      throw new OutboundError(origin, `${url.href} announces ${declared} bytes, more than ${this.maxBytes}`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length;
        if (size > this.maxBytes) {
          discard(res);
          throw new OutboundError(origin, `${url.href} sent more than ${this.maxBytes} bytes`);
        }
        chunks.push(chunk as Buffer);
      }
    } catch (error) {
      if (error instanceof OutboundError) throw error;
      throw new OutboundError(origin, `${url.href}: ${describe(error)}`);
    }
    return Buffer.concat(chunks);
  }

  /** Ends every connection, also those of requests still waiting. */
  async close(): Promise<void> {
    await Promise.all([this.publicOnly.destroy(), this.loopbackToo.destroy()]);
  }
}

/** Drops a body not read (a redirect's, one too large); its stream may still report the abort, which nobody needs. */
function discard(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => undefined);
  res.body.destroy();
}

function describe(error: unknown): string {
  const e = error as { message?: string; code?: string; cause?: { message?: string; code?: string } };
  return [e.code, e.message, e.cause?.code, e.cause?.message].filter(Boolean).join(': ');
}
