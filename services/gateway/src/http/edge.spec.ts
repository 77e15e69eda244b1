import { Socket } from 'node:net';
import { answerClientError, clientErrorProblem, tlsOptions, trustProxyOption } from './edge';

describe('trustProxyOption', () => {
  it('trusts nobody without KEEL_TRUSTED_PROXIES, else exactly the configured blocks', () => {
    expect(trustProxyOption({ KEEL_TRUSTED_PROXIES: [] })).toBe(false);
    expect(trustProxyOption({ KEEL_TRUSTED_PROXIES: ['10.0.0.0/8', '192.168.1.10'] })).toEqual(['10.0.0.0/8', '192.168.1.10']);
  });
});

describe('tlsOptions', () => {
  it('is plain HTTP without a certificate, and names the setting whose file cannot be read', () => {
    expect(tlsOptions({})).toBeUndefined();
    expect(() => tlsOptions({ KEEL_TLS_CERT: '/nonexistent/tls.crt', KEEL_TLS_KEY: '/nonexistent/tls.key' })).toThrow(/^KEEL_TLS_CERT: cannot read \/nonexistent\/tls\.crt/);
  });
});

describe('answerClientError', () => {
  it.each([
    ['HPE_HEADER_OVERFLOW', 431, 'headers_too_large'],
    ['ERR_HTTP_REQUEST_TIMEOUT', 408, 'request_timeout'],
    ['HPE_INVALID_HEADER_TOKEN', 400, 'validation_failed'],
  ])('answers %s with %i problem+json (%s) and closes the connection', (code, status, keelCode) => {
    expect(clientErrorProblem(code).status).toBe(status);
    let written = '';
    const socket = { destroyed: false, writable: true, write: (s: string) => (written += s), destroy: jest.fn() };
    answerClientError(Object.assign(new Error('parse error'), { code }), socket as unknown as Socket);
    const [head, body] = written.split('\r\n\r\n') as [string, string];
    expect(head).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    expect(head).toContain('Content-Type: application/problem+json');
    expect(head).toContain(`Content-Length: ${Buffer.byteLength(body)}`);
    expect(JSON.parse(body)).toMatchObject({ status, code: keelCode, detail: expect.any(String) });
    expect(socket.destroy).toHaveBeenCalled();
  });

  it('writes nothing to a connection the client reset', () => {
    const socket = { destroyed: false, writable: true, write: jest.fn(), destroy: jest.fn() };
    answerClientError(Object.assign(new Error('reset'), { code: 'ECONNRESET' }), socket as unknown as Socket);
    expect(socket.write).not.toHaveBeenCalled();
  });
});
