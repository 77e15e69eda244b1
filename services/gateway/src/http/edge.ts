import { readFileSync } from 'node:fs';
import { STATUS_CODES } from 'node:http';
import { Socket } from 'node:net';
import { ServerOptions as TlsServerOptions } from 'node:https';
import { KeelConfig } from '@keel/config';
import { KeelError } from '@keel/contracts';
import { problem } from './problem';

/**
 * Fastify's `trustProxy`: the configured proxies (KEEL_TRUSTED_PROXIES), or `false`. Given a
 * list, Fastify (proxy-addr) walks `X-Forwarded-For` from the socket's peer leftwards while the
 * hop is a trusted proxy: `req.ip` is the rightmost address that is not, so a client cannot
 * choose its address by sending a forged header (it sits left of what the proxy appended).
 * `X-Forwarded-Proto` and `-Host` are honoured from the same peers only. Nothing is trusted
 * without configuration, and a peer outside the list is the client whatever it sends.
 */
export function trustProxyOption(config: Pick<KeelConfig, 'KEEL_TRUSTED_PROXIES'>): false | string[] {
  return config.KEEL_TRUSTED_PROXIES.length ? [...config.KEEL_TRUSTED_PROXIES] : false;
}

/**
 * The gateway's TLS settings when KEEL_TLS_CERT and KEEL_TLS_KEY name PEM files (else
 * undefined: plain HTTP, e.g. behind a TLS-terminating proxy). TLS 1.2 is the minimum; 1.3 is
 * Node's maximum and what a modern client negotiates. Unreadable files stop the start with
 * their names.
 */
export function tlsOptions(config: Pick<KeelConfig, 'KEEL_TLS_CERT' | 'KEEL_TLS_KEY'>): TlsServerOptions | undefined {
  if (!config.KEEL_TLS_CERT || !config.KEEL_TLS_KEY) return undefined;
  const read = (setting: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(`${setting}: cannot read ${path} (${(error as Error).message})`);
    }
  };
  return {
    cert: read('KEEL_TLS_CERT', config.KEEL_TLS_CERT),
    key: read('KEEL_TLS_KEY', config.KEEL_TLS_KEY),
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.3',
  };
}

/** What Node's HTTP parser refused, as a Keel error (the request never reached Fastify). */
export function clientErrorProblem(code: string | undefined): KeelError {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return new KeelError('headers_too_large', 'The request line and headers are larger than the 16 KiB this server reads.');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
    case 'ERR_HTTP_HEADERS_TIMEOUT':
      return new KeelError('request_timeout', 'The request did not arrive in time.');
    default:
      return new KeelError('validation_failed', 'The request is not valid HTTP/1.1 (bad request line, header or framing).');
  }
}

/**
 * Fastify's `clientErrorHandler`: Node's own answers to requests it cannot parse (431 for
 * oversized headers, 400 for a malformed request line or header, 408 for a slow one) as
 * problem+json, like every other 4xx. The connection is closed afterwards, as Node does.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if (socket.writable) {
    const error = clientErrorProblem(err.code);
    const body = JSON.stringify(problem(error, ''));
    socket.write(
      `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status]}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}
