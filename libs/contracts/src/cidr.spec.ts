import { checkCidr, ipAllowed } from './cidr';

describe('checkCidr', () => {
  describe('accepts a network block', () => {
    it.each([
      ['0.0.0.0/0', '0.0.0.0/0'],
      ['10.0.0.0/8', '10.0.0.0/8'],
      ['192.168.1.0/24', '192.168.1.0/24'],
      ['203.0.113.7/32', '203.0.113.7/32'],
      ['::/0', '::/0'],
      ['2001:db8::/32', '2001:db8::/32'],
      ['::1/128', '::1/128'],
      ['fe80::/10', 'fe80::/10'],
      ['2001:db8:0:0:0:0:0:0/32', '2001:db8:0:0:0:0:0:0/32'],
    ])('%s', (input, normalized) => {
      expect(checkCidr(input)).toEqual({ ok: true, normalized });
    });

    it('lower-cases an IPv6 address', () => {
      expect(checkCidr('2001:DB8:ABCD::/48')).toEqual({ ok: true, normalized: '2001:db8:abcd::/48' });
    });

    it('normalises a prefix written with a leading zero', () => {
      expect(checkCidr('10.0.0.0/08')).toEqual({ ok: true, normalized: '10.0.0.0/8' });
    });

    it('accepts the widest and narrowest prefix of each family', () => {
      expect(checkCidr('8.8.8.8/32').ok).toBe(true);
      expect(checkCidr('2001:db8::1/128').ok).toBe(true);
    });
  });

  describe('refuses', () => {
    function reasonOf(input: string): string {
      const result = checkCidr(input);
      if (result.ok) throw new Error(`expected ${input} to be refused, got ${result.normalized}`);
      return result.reason;
    }

    it('an address without a prefix', () => {
      expect(reasonOf('10.0.0.0')).toMatch(/missing "\/prefix"/);
      expect(reasonOf('2001:db8::')).toMatch(/missing "\/prefix"/);
    });

    it('an empty prefix', () => {
      expect(reasonOf('10.0.0.0/')).toMatch(/prefix length must be a number/);
    });

    it.each(['10.0.0.0/x', '10.0.0.0/-1', '10.0.0.0/8.0', '10.0.0.0/ 8', '10.0.0.0/8 ', '10.0.0.0/1000', '::/0x10'])(
      'a non-numeric or over-long prefix: %s',
      (input) => {
        expect(reasonOf(input)).toMatch(/prefix length must be a number/);
      },
    );

    it('an IPv4 prefix above 32', () => {
      expect(reasonOf('10.0.0.0/33')).toBe('the prefix length must be at most 32');
    });

    it('an IPv6 prefix above 128', () => {
      expect(reasonOf('2001:db8::/129')).toBe('the prefix length must be at most 128');
    });

    it.each(['10.0.0/8', '256.0.0.0/8', '10.0.0.0.0/8', 'example.com/8', '/8', '2001:db8:::/32', '2001:db8::g/32', ' 10.0.0.0/8'])(
      'a malformed address: %s',
      (input) => {
        expect(reasonOf(input)).toMatch(/is not an IPv4 or IPv6 address/);
      },
    );

    it.each(['10.0.0.1/8', '192.168.1.1/24', '0.0.0.1/0', '2001:db8::1/32', '2001:db8:0:1::/48', '::1/0'])(
      'a block with host bits set: %s',
      (input) => {
        expect(reasonOf(input)).toBe('host bits are set; use the network address');
      },
    );

    it('host bits in the embedded IPv4 part of an IPv4-mapped IPv6 block', () => {
      expect(reasonOf('::ffff:10.0.0.1/104')).toBe('host bits are set; use the network address');
    });
  });
});

describe('checkCidr with IPv6 zone ids', () => {
  it('refuses a zone id instead of crashing or letting it through', () => {
    expect(checkCidr('fe80::%eth0/64')).toEqual({ ok: false, reason: expect.stringContaining('zone id') });
    expect(checkCidr('fe80::1%eth0/128').ok).toBe(false);
  });
});

describe('ipAllowed', () => {
  const ranges = ['10.0.0.0/8', '192.168.1.0/24', '2001:db8::/32', '203.0.113.7/32'];

  it('allows everyone when the tenant lists no ranges', () => {
    expect(ipAllowed('198.51.100.1', [])).toBe(true);
    expect(ipAllowed(undefined, [])).toBe(true);
  });

  it.each([
    ['10.1.2.3', true],
    ['10.255.255.255', true],
    ['11.0.0.1', false],
    ['192.168.1.77', true],
    ['192.168.2.1', false],
    ['203.0.113.7', true],
    ['203.0.113.8', false],
    ['::ffff:10.9.8.7', true],
    ['::ffff:172.16.0.1', false],
    ['2001:db8:1::5', true],
    ['2001:db9::1', false],
    ['::1', false],
    ['not-an-ip', false],
    ['', false],
  ])('%s → %s', (ip, allowed) => {
    expect(ipAllowed(ip, ranges)).toBe(allowed);
  });

  it('refuses a caller whose address is unknown when ranges are set', () => {
    expect(ipAllowed(undefined, ranges)).toBe(false);
  });
});
