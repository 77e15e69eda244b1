import { classifyAddress, SafeFetch } from './safe-fetch';

describe('classifyAddress', () => {
  it.each([
    ['8.8.8.8', 'public'],
    ['1.1.1.1', 'public'],
    ['2606:4700:4700::1111', 'public'],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['10.0.0.1', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['fec0::1', 'private'],
    ['169.254.0.1', 'link-local'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['100.64.0.1', 'carrier-grade NAT'],
    ['100.127.255.255', 'carrier-grade NAT'],
    ['0.0.0.0', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'broadcast'],
    ['169.254.169.254', 'cloud metadata'],
    ['fd00:ec2::254', 'cloud metadata'],
    ['100.100.100.200', 'cloud metadata'],
    ['192.0.2.1', 'reserved'],
    ['240.0.0.1', 'reserved'],
    ['2001:db8::1', 'reserved'],
    ['64:ff9b::a9fe:a9fe', 'reserved'],
    ['2002:7f00:1::', 'reserved'],
    ['::7f00:1', 'reserved'],
    ['not-an-address', 'invalid'],
    ['', 'invalid'],
  ])('%s is %s', (address, cls) => {
    expect(classifyAddress(address)).toBe(cls);
  });

  it.each([
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:10.1.2.3', 'private'],
    ['::ffff:169.254.169.254', 'cloud metadata'],
    ['::ffff:169.254.1.1', 'link-local'],
    ['::ffff:100.64.1.1', 'carrier-grade NAT'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['::ffff:8.8.8.8', 'public'],
  ])('judges the IPv4-mapped %s as the IPv4 address it maps (%s)', (address, cls) => {
    expect(classifyAddress(address)).toBe(cls);
  });
});

describe('SafeFetch.urlProblem', () => {
  const strict = new SafeFetch();
  const dev = new SafeFetch({ allowHttpLoopback: true });
  afterAll(() => Promise.all([strict.close(), dev.close()]));

  it('accepts https to a name or a public address', () => {
    expect(strict.urlProblem('https://idp.example.com')).toBeUndefined();
    expect(strict.urlProblem('https://8.8.8.8:8443/x')).toBeUndefined();
    expect(strict.urlProblem('https://[2606:4700:4700::1111]/')).toBeUndefined();
  });

  it('refuses plain http, other schemes, credentials and non-URLs', () => {
    expect(strict.urlProblem('http://idp.example.com')).toBe('must be https');
    expect(strict.urlProblem('ftp://idp.example.com')).toBe('must be https');
    expect(strict.urlProblem('file:///etc/passwd')).toBe('must be https');
    expect(strict.urlProblem('https://user:pw@idp.example.com')).toBe('must not carry credentials');
    expect(strict.urlProblem('idp.example.com')).toBe('is not an absolute URL');
  });

  it('refuses address literals that are not public, in every spelling the URL parser normalises', () => {
    for (const url of ['https://127.0.0.1', 'https://[::1]', 'https://10.0.0.1', 'https://169.254.169.254/latest/meta-data', 'https://[fd00:ec2::254]',
      'https://[::ffff:127.0.0.1]', 'https://2130706433', 'https://0x7f.1', 'https://0177.0.0.1', 'https://100.64.0.1', 'https://0.0.0.0', 'https://[fe80::1]']) {
      expect({ url, problem: strict.urlProblem(url) }).toEqual({ url, problem: expect.stringMatching(/^names a .* address, to which Keel does not connect$/) });
    }
  });

  it('allows http to loopback only with the development setting, and nothing else with it', () => {
    expect(strict.urlProblem('http://127.0.0.1:8080')).toMatch(/KEEL_SSO_ALLOW_HTTP_LOOPBACK=true/);
    expect(strict.urlProblem('http://localhost:8080')).toMatch(/KEEL_SSO_ALLOW_HTTP_LOOPBACK=true/);
    expect(dev.urlProblem('http://127.0.0.1:8080')).toBeUndefined();
    expect(dev.urlProblem('http://localhost:8080')).toBeUndefined();
    expect(dev.urlProblem('http://[::1]:8080')).toBeUndefined();
    expect(dev.urlProblem('http://10.0.0.1')).toBe('must be https');
    expect(dev.urlProblem('http://idp.example.com')).toBe('must be https');
    expect(dev.urlProblem('https://127.0.0.1')).toMatch(/^names a loopback address/);
  });
});
