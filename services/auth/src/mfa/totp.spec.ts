import { base32Decode, base32Encode, hotp, otpauthUrl, totp, totpStep, verifyTotp } from './totp';

/** RFC 6238 Appendix B, SHA-1 rows: the seed is the ASCII string "12345678901234567890". */
const SEED = Buffer.from('12345678901234567890', 'ascii');
const RFC6238_SHA1: [seconds: number, step: number, eightDigits: string][] = [
  [59, 0x1, '94287082'],
  [1111111109, 0x23523ec, '07081804'],
  [1111111111, 0x23523ed, '14050471'],
  [1234567890, 0x273ef07, '89005924'],
  [2000000000, 0x3f940aa, '69279037'],
  [20000000000, 0x27bc86aa, '65353130'],
];

describe('TOTP (RFC 6238) and HOTP (RFC 4226)', () => {
  it.each(RFC6238_SHA1)('at %i s (step %i) the 8-digit code is %s', (seconds, step, code) => {
    expect(totpStep(seconds * 1000)).toBe(step);
    expect(hotp(SEED, step, 8)).toBe(code);
  });

  it.each(RFC6238_SHA1)('at %i s the 6-digit code is the last 6 digits of the vector', (seconds, _, code) => {
    expect(totp(SEED, seconds * 1000)).toBe(code.slice(-6));
  });

  it('matches RFC 4226 Appendix D (HOTP, counters 0–9)', () => {
    const expected = ['755224', '287082', '359152', '969429', '338314', '254676', '287922', '162583', '399871', '520489'];
    expect(expected.map((_, counter) => hotp(SEED, counter))).toEqual(expected);
  });

  it('accepts the current step and one either side, nothing further', () => {
    const at = 1111111111 * 1000;
    const now = totpStep(at);
    for (const delta of [-1, 0, 1]) expect(verifyTotp(SEED, hotp(SEED, now + delta), at)).toBe(now + delta);
    for (const delta of [-3, -2, 2, 3]) expect(verifyTotp(SEED, hotp(SEED, now + delta), at)).toBeNull();
  });

  it('refuses a code of a step already used, or of an earlier one (replay)', () => {
    const at = 1234567890 * 1000;
    const now = totpStep(at);
    expect(verifyTotp(SEED, hotp(SEED, now), at, now)).toBeNull();
    expect(verifyTotp(SEED, hotp(SEED, now - 1), at, now)).toBeNull();
    expect(verifyTotp(SEED, hotp(SEED, now + 1), at, now)).toBe(now + 1);
    expect(verifyTotp(SEED, hotp(SEED, now), at, now - 1)).toBe(now);
  });

  it('refuses malformed codes', () => {
    const at = 59_000;
    for (const code of ['', '28708', '2870820', '28708a', ' 87082', '94287082']) expect(verifyTotp(SEED, code, at)).toBeNull();
  });

  it('encodes and decodes base32 (RFC 4648 §10 vectors, without padding)', () => {
    const vectors: [string, string][] = [['', ''], ['f', 'MY'], ['fo', 'MZXQ'], ['foo', 'MZXW6'], ['foob', 'MZXW6YQ'], ['fooba', 'MZXW6YTB'], ['foobar', 'MZXW6YTBOI']];
    for (const [plain, encoded] of vectors) {
      expect(base32Encode(Buffer.from(plain))).toBe(encoded);
      expect(base32Decode(encoded).toString()).toBe(plain);
    }
    expect(base32Encode(SEED)).toBe('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ');
    expect(base32Decode('gezd gnbv gy3t qojq gezd gnbv gy3t qojq').equals(SEED)).toBe(true);
    expect(base32Decode('MZXW6===').toString()).toBe('foo');
    expect(() => base32Decode('MZ1W')).toThrow(/base32/);
  });

  it('writes the key URI authenticator apps read', () => {
    const url = new URL(otpauthUrl('Keel', 'ada@example.test', SEED));
    expect(url.protocol).toBe('otpauth:');
    expect(url.host).toBe('totp');
    expect(decodeURIComponent(url.pathname)).toBe('/Keel:ada@example.test');
    expect(Object.fromEntries(url.searchParams)).toEqual({ secret: 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', issuer: 'Keel', algorithm: 'SHA1', digits: '6', period: '30' });
  });
});
