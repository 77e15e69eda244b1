import { createHash, randomBytes } from 'node:crypto';
import { kekFrom, open, openStoredKey, randomToken, seal, SealedValueError, sha256Hex } from './index';

describe('seal / open', () => {
  const kek = randomBytes(32);

  it('round-trips a secret, and each seal is different (random iv)', () => {
    const secret = Buffer.from('the private half');
    const a = seal(kek, secret, 'key-1');
    const b = seal(kek, secret, 'key-1');
    expect(a.equals(b)).toBe(false);
    expect(open(kek, a, 'key-1').toString()).toBe('the private half');
    expect(a.includes(secret)).toBe(false);
  });

  it('refuses another key, another context, or a changed byte', () => {
    const sealed = seal(kek, Buffer.from('x'), 'user-1');
    expect(() => open(randomBytes(32), sealed, 'user-1')).toThrow(SealedValueError);
    expect(() => open(randomBytes(32), sealed, 'user-1')).toThrow(/user-1.*another KEEL_KEK/);
    expect(() => open(kek, sealed, 'user-2')).toThrow();
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 1]! ^= 1;
    expect(() => open(kek, tampered, 'user-1')).toThrow();
  });
});

describe('kekFrom', () => {
  it('takes exactly 32 bytes of base64', () => {
    const key = randomBytes(32);
    expect(kekFrom(key.toString('base64')).equals(key)).toBe(true);
    expect(() => kekFrom(randomBytes(16).toString('base64'))).toThrow(/32 bytes/);
    expect(() => kekFrom(undefined)).toThrow(/KEEL_KEK/);
  });
});

describe('sha256Hex and randomToken', () => {
  it('hashes as SHA-256 hex and makes URL-safe tokens of the asked entropy', () => {
    expect(sha256Hex('abc')).toBe(createHash('sha256').update('abc').digest('hex'));
    const t = randomToken(32);
    expect(t).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(randomToken(32)).not.toBe(t);
  });
});

describe('openStoredKey', () => {
  it('opens a key sealed under the same KEK, and otherwise says what to do', () => {
    const kek = randomBytes(32);
    const sealed = seal(kek, Buffer.from('private'), 'kid-1');
    expect(openStoredKey(kek, sealed, 'kid-1', 'The key kid-1').toString()).toBe('private');
    expect(() => openStoredKey(randomBytes(32), sealed, 'kid-1', 'The key kid-1')).toThrow(/^The key kid-1 in this database does not open with this KEEL_KEK\. Start with the KEEL_KEK that sealed it/);
  });
});
