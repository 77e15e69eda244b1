import { createHash } from 'node:crypto';
import { canonicalJson, chainHash, GENESIS_HASH } from './hash-chain';

function doubleFromHex(hex: string): number {
  return Buffer.from(hex, 'hex').readDoubleBE(0);
}

/** The same object with every key order reversed, at every depth. */
function reversedKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reversedKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).reverse().map((k) => [k, reversedKeys((value as Record<string, unknown>)[k])]));
  }
  return value;
}

describe('canonicalJson (RFC 8785)', () => {
  it('produces the output of the RFC 8785 §3.2.2 example', () => {
    const input = JSON.parse(String.raw`{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }`);
    expect(canonicalJson(input)).toBe(
      String.raw`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
    );
  });

  it('sorts keys by UTF-16 code units as in the RFC 8785 §3.2.3 example', () => {
    const input = {
      '\u20ac': 'Euro Sign',
      '\r': 'Carriage Return',
      '\ufb33': 'Hebrew Letter Dalet With Dagesh',
      '1': 'One',
      '\ud83d\ude00': 'Emoji: Grinning Face',
      '\u0080': 'Control',
      '\u00f6': 'Latin Small Letter O With Diaeresis',
    };
    const canonical = canonicalJson(input);
    // (JSON.parse would move the integer-like key "1" first, so read the order from the text.)
    expect([...canonical.matchAll(/":"([^"]+)"/g)].map((m) => m[1])).toEqual([
      'Carriage Return',
      'One',
      'Control',
      'Latin Small Letter O With Diaeresis',
      'Euro Sign',
      'Emoji: Grinning Face',
      'Hebrew Letter Dalet With Dagesh',
    ]);
    expect(canonical).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",' +
        '"\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
  });

  it('sorts keys of nested objects and keeps array order', () => {
    expect(canonicalJson({ b: { z: 1, a: [3, { y: 1, x: 2 }, 1] }, a: null, B: true })).toBe('{"B":true,"a":null,"b":{"a":[3,{"x":2,"y":1},1],"z":1}}');
  });

  it('leaves no whitespace', () => {
    expect(canonicalJson({ a: [1, 2], b: 'x y' })).toBe('{"a":[1,2],"b":"x y"}');
  });

  it.each([
    ['0000000000000000', '0'],
    ['8000000000000000', '0'],
    ['0000000000000001', '5e-324'],
    ['8000000000000001', '-5e-324'],
    ['7fefffffffffffff', '1.7976931348623157e+308'],
    ['ffefffffffffffff', '-1.7976931348623157e+308'],
    ['4340000000000000', '9007199254740992'],
    ['c340000000000000', '-9007199254740992'],
    ['4430000000000000', '295147905179352830000'],
    ['44b52d02c7e14af5', '9.999999999999997e+22'],
    ['44b52d02c7e14af6', '1e+23'],
    ['44b52d02c7e14af7', '1.0000000000000001e+23'],
    ['444b1ae4d6e2ef4e', '999999999999999700000'],
    ['444b1ae4d6e2ef4f', '999999999999999900000'],
    ['444b1ae4d6e2ef50', '1e+21'],
    ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
    ['3eb0c6f7a0b5ed8d', '0.000001'],
    ['41b3de4355555553', '333333333.3333332'],
    ['41b3de4355555554', '333333333.33333325'],
    ['41b3de4355555555', '333333333.3333333'],
    ['41b3de4355555556', '333333333.3333334'],
    ['41b3de4355555557', '333333333.33333343'],
    ['becbf647612f3696', '-0.0000033333333333333333'],
    ['43143ff3c1cb0959', '1424953923781206.2'],
  ])('serialises the IEEE-754 value %s as %s (RFC 8785 Appendix B)', (hex, expected) => {
    expect(canonicalJson(doubleFromHex(hex))).toBe(expected);
    expect(canonicalJson({ n: doubleFromHex(hex) })).toBe(`{"n":${expected}}`);
  });

  it('writes simple numbers in their shortest form', () => {
    expect(canonicalJson([1e21, 1e20, 0.1, -0, 100, 1.5, 1e-7, 0.000001, 2 ** 53 + 2])).toBe(
      '[1e+21,100000000000000000000,0.1,0,100,1.5,1e-7,0.000001,9007199254740994]',
    );
  });

  it('refuses NaN and infinities, which have no JSON form', () => {
    expect(() => canonicalJson(NaN)).toThrow();
    expect(() => canonicalJson({ a: Infinity })).toThrow();
    expect(() => canonicalJson([-Infinity])).toThrow();
  });

  it('escapes only quote, backslash and control characters, with the short forms where JSON has them', () => {
    expect(canonicalJson('"\\\b\f\n\r\t')).toBe(String.raw`"\"\\\b\f\n\r\t"`);
    expect(canonicalJson('\u0000\u0001\u001f')).toBe(String.raw`"\u0000\u0001\u001f"`);
    expect(canonicalJson('/ \u007f é € 😀 \u2028 </script>')).toBe('"/ \u007f é € 😀 \u2028 </script>"');
  });

  it('escapes keys like values', () => {
    expect(canonicalJson({ 'a"b': 1, 'line\n': 2 })).toBe('{"a\\"b":1,"line\\n":2}');
  });

  it('drops undefined properties as JSON does', () => {
    expect(canonicalJson({ a: 1, b: undefined })).toBe('{"a":1}');
  });

  it('refuses a value with no JSON form at all', () => {
    expect(() => canonicalJson(undefined)).toThrow('value has no JSON form');
  });
});

describe('chainHash', () => {
  const envelope = {
    type: 'tenant.tenant.suspended',
    id: '0190d4a5-0000-7000-8000-000000000001',
    schemaVersion: 1,
    tenantId: 't1',
    aggregateType: 'tenant',
    aggregateId: 'a1',
    aggregateVersion: 2,
    occurredAt: '2024-05-01T12:00:00.000Z',
    actor: { kind: 'user', id: 'u-1' },
    correlationId: 'req-1',
    data: { reason: 'unpaid', amount: 12.5 },
  };
  const canonical =
    '{"actor":{"id":"u-1","kind":"user"},"aggregateId":"a1","aggregateType":"tenant","aggregateVersion":2,' +
    '"correlationId":"req-1","data":{"amount":12.5,"reason":"unpaid"},"id":"0190d4a5-0000-7000-8000-000000000001",' +
    '"occurredAt":"2024-05-01T12:00:00.000Z","schemaVersion":1,"tenantId":"t1","type":"tenant.tenant.suspended"}';

  it('starts the chain from 64 zeros', () => {
    expect(GENESIS_HASH).toBe('0'.repeat(64));
  });

  it('is SHA-256 of the previous hash (hex) followed by the canonical JSON, as lowercase hex', () => {
    expect(canonicalJson(envelope)).toBe(canonical);
    const expected = createHash('sha256').update(GENESIS_HASH + canonical, 'utf8').digest('hex');
    expect(chainHash(GENESIS_HASH, envelope)).toBe(expected);
    expect(chainHash(GENESIS_HASH, envelope)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('hashes non-ASCII text as UTF-8', () => {
    const e = { ...envelope, data: { reason: 'impayé €' } };
    const expected = createHash('sha256').update(Buffer.from(GENESIS_HASH + canonicalJson(e), 'utf8')).digest('hex');
    expect(chainHash(GENESIS_HASH, e)).toBe(expected);
  });

  it('links each entry to the one before', () => {
    const first = chainHash(GENESIS_HASH, envelope);
    const second = { ...envelope, aggregateVersion: 3 };
    expect(chainHash(first, second)).toBe(createHash('sha256').update(first + canonicalJson(second)).digest('hex'));
    expect(chainHash(first, second)).not.toBe(chainHash(GENESIS_HASH, second));
  });

  it('changes when any field changes, at any depth', () => {
    const base = chainHash(GENESIS_HASH, envelope);
    const variants: unknown[] = [
      ...Object.keys(envelope).map((k) => ({ ...envelope, [k]: `${String((envelope as Record<string, unknown>)[k])}x` })),
      { ...envelope, aggregateVersion: 20 },
      { ...envelope, actor: { kind: 'user', id: 'u-2' } },
      { ...envelope, data: { reason: 'unpaid', amount: 12.51 } },
      { ...envelope, data: { reason: 'unpaid', amount: 12.5, extra: null } },
      { ...envelope, causationId: 'req-0' },
    ];
    const hashes = variants.map((v) => chainHash(GENESIS_HASH, v));
    for (const h of hashes) expect(h).not.toBe(base);
    expect(new Set(hashes).size).toBe(hashes.length);
  });

  it('changes with the previous hash', () => {
    expect(chainHash('f'.repeat(64), envelope)).not.toBe(chainHash(GENESIS_HASH, envelope));
  });

  it('does not depend on the key order of the input', () => {
    expect(chainHash(GENESIS_HASH, reversedKeys(envelope))).toBe(chainHash(GENESIS_HASH, envelope));
    expect(JSON.stringify(reversedKeys(envelope))).not.toBe(JSON.stringify(envelope));
  });

  it('survives a JSON round trip, as an envelope read back from Postgres would', () => {
    expect(chainHash(GENESIS_HASH, JSON.parse(JSON.stringify(envelope)))).toBe(chainHash(GENESIS_HASH, envelope));
  });
});
