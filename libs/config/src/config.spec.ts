import { ConfigError, parseConfig, rolePassword, serviceDatabaseUrl } from './config';

function configError(env: Record<string, string | undefined>): ConfigError {
  try {
    parseConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected the configuration to be refused');
}

describe('parseConfig', () => {
  it('fills every default from an empty environment', () => {
    expect(parseConfig({})).toEqual({
      KEEL_BUDGET_DRIFT_INTERVAL_MS: 60_000,
      KEEL_FORECAST_INTERVAL_MS: 300_000,
      KEEL_INVOICE_GRACE_SECONDS: 259_200,
      KEEL_INVOICE_CLOSE_INTERVAL_MS: 60_000,
      KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK: false,
      KEEL_WEBHOOK_DISABLE_AFTER: 30,
      KEEL_WEBHOOK_MAX_ATTEMPTS: 10,
      KEEL_WEBHOOK_RETRY_BASE_MS: 30_000,
      KEEL_WEBHOOK_TIMEOUT_MS: 10_000,
      NATS_URL: 'nats://127.0.0.1:4222',
      DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/keel',
      REDIS_URL: 'redis://127.0.0.1:6379',
      KEEL_DB_PASSWORD: 'keel',
      KEEL_DB_ROLE_PASSWORDS: {},
      KEEL_STREAM: 'EVENTS',
      KEEL_SUBJECT_PREFIX: '',
      KEEL_STREAM_REPLICAS: 1,
      KEEL_REDIS_PREFIX: 'keel:',
      KEEL_HTTP_HOST: '127.0.0.1',
      KEEL_HTTP_PORT: 8080,
      KEEL_DB_CONNECT_TIMEOUT_MS: 5000,
      KEEL_DB_STATEMENT_TIMEOUT_MS: 30000,
      KEEL_DENIAL_WINDOW_SECONDS: 60,
      KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: 15000,
      KEEL_REQUEST_TIMEOUT_MS: 5000,
      KEEL_CONSISTENCY_WAIT_MS: 3000,
      KEEL_CHECKPOINT_EVERY: 1000,
      KEEL_CHECKPOINT_INTERVAL_MS: 60000,
      KEEL_SSO_ALLOW_HTTP_LOOPBACK: false,
      KEEL_LOG_LEVEL: 'info',
      KEEL_ENV: 'production',
      KEEL_TRUSTED_PROXIES: [],
      KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: 120,
    });
  });

  it('reads KEEL_TRUSTED_PROXIES as a list of addresses and CIDR blocks, refusing anything else', () => {
    expect(parseConfig({ KEEL_TRUSTED_PROXIES: ' 10.0.0.0/8, 192.168.1.10 ,2001:db8::/32,' }).KEEL_TRUSTED_PROXIES).toEqual(['10.0.0.0/8', '192.168.1.10', '2001:db8::/32']);
    expect(configError({ KEEL_TRUSTED_PROXIES: '10.0.0.0/8,lb.internal' }).issues).toEqual(['KEEL_TRUSTED_PROXIES: "lb.internal" is not an IP address or CIDR block (e.g. 10.0.0.0/8)']);
    expect(configError({ KEEL_TRUSTED_PROXIES: '10.0.0.0/33' }).issues).toEqual(['KEEL_TRUSTED_PROXIES: "10.0.0.0/33" has a bad prefix length (at most 32)']);
    expect(configError({ KEEL_TRUSTED_PROXIES: '10.0.0.0/8/1' }).issues).toHaveLength(1);
  });

  it('takes KEEL_TLS_CERT and KEEL_TLS_KEY together or not at all', () => {
    expect(parseConfig({ KEEL_TLS_CERT: '/etc/keel/tls.crt', KEEL_TLS_KEY: '/etc/keel/tls.key' })).toMatchObject({ KEEL_TLS_CERT: '/etc/keel/tls.crt', KEEL_TLS_KEY: '/etc/keel/tls.key' });
    expect(configError({ KEEL_TLS_CERT: '/etc/keel/tls.crt' }).issues).toEqual(['KEEL_TLS_KEY: set KEEL_TLS_CERT and KEEL_TLS_KEY together (both or neither)']);
    expect(configError({ KEEL_TLS_KEY: '/etc/keel/tls.key' }).issues).toEqual(['KEEL_TLS_CERT: set KEEL_TLS_CERT and KEEL_TLS_KEY together (both or neither)']);
  });

  it('reads KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE as a non-negative integer (0: off)', () => {
    expect(parseConfig({ KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: '0' }).KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE).toBe(0);
    expect(configError({ KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: '-1' }).issues[0]).toMatch(/^KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: /);
  });

  it('reads KEEL_SSO_ALLOW_HTTP_LOOPBACK as true or false only', () => {
    expect(parseConfig({ KEEL_SSO_ALLOW_HTTP_LOOPBACK: 'true' }).KEEL_SSO_ALLOW_HTTP_LOOPBACK).toBe(true);
    expect(parseConfig({ KEEL_SSO_ALLOW_HTTP_LOOPBACK: 'false' }).KEEL_SSO_ALLOW_HTTP_LOOPBACK).toBe(false);
    expect(configError({ KEEL_SSO_ALLOW_HTTP_LOOPBACK: 'yes' }).issues).toEqual(['KEEL_SSO_ALLOW_HTTP_LOOPBACK: must be true or false']);
  });

  it('coerces numeric settings from their string form', () => {
    const config = parseConfig({
      KEEL_HTTP_PORT: '9090',
      KEEL_OPS_PORT: '9464',
      KEEL_STREAM_REPLICAS: '3',
      KEEL_REQUEST_TIMEOUT_MS: '250',
      KEEL_CONSISTENCY_WAIT_MS: '0',
      KEEL_CHECKPOINT_EVERY: '10',
    });
    expect(config).toMatchObject({
      KEEL_HTTP_PORT: 9090,
      KEEL_OPS_PORT: 9464,
      KEEL_STREAM_REPLICAS: 3,
      KEEL_REQUEST_TIMEOUT_MS: 250,
      KEEL_CONSISTENCY_WAIT_MS: 0,
      KEEL_CHECKPOINT_EVERY: 10,
    });
  });

  it('ignores variables it does not know', () => {
    expect(parseConfig({ HOME: '/root', PATH: '/bin' })).not.toHaveProperty('HOME');
  });

  it.each([
    ['KEEL_HTTP_PORT', 'http'],
    ['KEEL_HTTP_PORT', '65536'],
    ['KEEL_HTTP_PORT', '80.5'],
    ['KEEL_STREAM_REPLICAS', '0'],
    ['KEEL_STREAM_REPLICAS', '7'],
    ['KEEL_REQUEST_TIMEOUT_MS', '99'],
    ['KEEL_CHECKPOINT_EVERY', '0'],
    ['KEEL_LOG_LEVEL', 'verbose'],
    ['KEEL_STREAM', 'EVENTS.ALL'],
    ['KEEL_BOOTSTRAP_TOKEN', 'too-short'],
    ['DATABASE_URL', 'not a url'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'http://'],
  ])('refuses %s=%s, naming the variable', (name, value) => {
    const error = configError({ [name]: value });
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]).toMatch(new RegExp(`^${name}: `));
    expect(error.message).toContain(`invalid configuration: ${name}: `);
  });

  it.each(['', 'run1.', 'ci_2024-05.'])('accepts the subject prefix %j', (prefix) => {
    expect(parseConfig({ KEEL_SUBJECT_PREFIX: prefix }).KEEL_SUBJECT_PREFIX).toBe(prefix);
  });

  it.each(['Run.', 'x', 'a.b.', '.', 'run 1.', 'evt.>'])('refuses the subject prefix %j', (prefix) => {
    expect(configError({ KEEL_SUBJECT_PREFIX: prefix }).issues).toEqual([
      'KEEL_SUBJECT_PREFIX: empty, or a lowercase token followed by a dot',
    ]);
  });

  it('reports every bad variable at once', () => {
    const error = configError({ KEEL_HTTP_PORT: 'x', KEEL_SUBJECT_PREFIX: 'Run.' });
    expect(error.issues.map((i) => i.split(':')[0]).sort()).toEqual(['KEEL_HTTP_PORT', 'KEEL_SUBJECT_PREFIX']);
  });

  it('treats empty strings as unset, so defaults apply and optional values stay absent', () => {
    const config = parseConfig({
      KEEL_HTTP_PORT: '',
      KEEL_OPS_PORT: '',
      KEEL_BOOTSTRAP_TOKEN: '',
      OTEL_EXPORTER_OTLP_ENDPOINT: '',
      DATABASE_URL: '',
      KEEL_LOG_LEVEL: '',
      KEEL_INSTANCE_ID: undefined,
    });
    expect(config.KEEL_HTTP_PORT).toBe(8080);
    expect(config.DATABASE_URL).toBe('postgres://postgres@127.0.0.1:5432/keel');
    expect(config.KEEL_LOG_LEVEL).toBe('info');
    expect(config).not.toHaveProperty('KEEL_OPS_PORT');
    expect(config).not.toHaveProperty('KEEL_BOOTSTRAP_TOKEN');
    expect(config).not.toHaveProperty('OTEL_EXPORTER_OTLP_ENDPOINT');
    expect(config).not.toHaveProperty('KEEL_INSTANCE_ID');
  });
});

describe('serviceDatabaseUrl', () => {
  it('swaps user and password for the service role and keeps host, port and database', () => {
    const config = parseConfig({ DATABASE_URL: 'postgres://admin:secret@db.internal:6543/keel_prod', KEEL_DB_PASSWORD: 's3cret' });
    const url = new URL(serviceDatabaseUrl(config, 'keel_tenant'));
    expect(url.protocol).toBe('postgres:');
    expect(url.username).toBe('keel_tenant');
    expect(url.password).toBe('s3cret');
    expect(url.hostname).toBe('db.internal');
    expect(url.port).toBe('6543');
    expect(url.pathname).toBe('/keel_prod');
    expect(serviceDatabaseUrl(config, 'keel_tenant')).toBe(
      'postgres://keel_tenant:s3cret@db.internal:6543/keel_prod?connect_timeout=5&statement_timeout=30000&idle_in_transaction_session_timeout=15000',
    );
  });

  it('adds a password when the admin URL has none', () => {
    expect(new URL(serviceDatabaseUrl(parseConfig({}), 'keel_audit')).password).toBe('keel');
  });

  it('carries the pool timeouts from the configuration, and keeps one the URL already sets', () => {
    const config = parseConfig({
      DATABASE_URL: 'postgres://admin@db:5432/keel?statement_timeout=900',
      KEEL_DB_CONNECT_TIMEOUT_MS: '2500',
      KEEL_DB_STATEMENT_TIMEOUT_MS: '1000',
      KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: '4000',
    });
    const params = new URL(serviceDatabaseUrl(config, 'keel_audit')).searchParams;
    expect(params.get('connect_timeout')).toBe('3');
    expect(params.get('statement_timeout')).toBe('900');
    expect(params.get('idle_in_transaction_session_timeout')).toBe('4000');
  });

  it.each([['KEEL_DB_CONNECT_TIMEOUT_MS'], ['KEEL_DB_STATEMENT_TIMEOUT_MS'], ['KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS']])('refuses %s of 0 (no limit)', (key) => {
    expect(configError({ [key]: '0' }).issues.join()).toContain(key);
  });

  it('keeps query parameters such as sslmode', () => {
    const config = parseConfig({ DATABASE_URL: 'postgres://admin@db:5432/keel?sslmode=require' });
    expect(new URL(serviceDatabaseUrl(config, 'keel_audit')).searchParams.get('sslmode')).toBe('require');
  });

  it('percent-encodes a password with URL-significant characters so it reads back intact', () => {
    const config = parseConfig({ KEEL_DB_PASSWORD: 'p@ss/w:rd#1' });
    const url = new URL(serviceDatabaseUrl(config, 'keel_tenant'));
    expect(decodeURIComponent(url.password)).toBe('p@ss/w:rd#1');
    expect(url.hostname).toBe('127.0.0.1');
    expect(url.pathname).toBe('/keel');
  });
});

describe('blank settings', () => {
  it('treats a whitespace-only value as unset, not as zero', () => {
    expect(parseConfig({ KEEL_HTTP_PORT: ' ', KEEL_CONSISTENCY_WAIT_MS: '  ' })).toMatchObject({ KEEL_HTTP_PORT: 8080, KEEL_CONSISTENCY_WAIT_MS: 3000 });
  });
});

describe('role secrets', () => {
  it('collects KEEL_DB_PASSWORD_<SERVICE> per role, falling back to KEEL_DB_PASSWORD', () => {
    const config = parseConfig({ KEEL_DB_PASSWORD: 'shared', KEEL_DB_PASSWORD_TENANT: 't-secret', KEEL_DB_PASSWORD_AUDIT: 'a-secret', KEEL_DB_PASSWORD_AUTH: '' });
    expect(config.KEEL_DB_ROLE_PASSWORDS).toEqual({ keel_tenant: 't-secret', keel_audit: 'a-secret' });
    expect(rolePassword(config, 'keel_tenant')).toBe('t-secret');
    expect(rolePassword(config, 'keel_audit')).toBe('a-secret');
    expect(rolePassword(config, 'keel_auth')).toBe('shared');
  });

  it('puts the role and its own secret into an admin URL', () => {
    const config = parseConfig({ DATABASE_URL: 'postgres://postgres:root@db:5432/keel', KEEL_DB_PASSWORD_TENANT: 't-secret' });
    const url = new URL(serviceDatabaseUrl(config, 'keel_tenant'));
    expect([url.username, url.password]).toEqual(['keel_tenant', 't-secret']);
  });

  it("uses a service's own URL as it is, secret included, adding only the pool timeouts", () => {
    const config = parseConfig({ DATABASE_URL: 'postgres://keel_tenant:its-own@db:5432/keel', KEEL_DB_PASSWORD: 'other' });
    const url = new URL(serviceDatabaseUrl(config, 'keel_tenant'));
    expect([url.username, url.password, url.host, url.pathname]).toEqual(['keel_tenant', 'its-own', 'db:5432', '/keel']);
    expect(url.searchParams.get('statement_timeout')).toBe('30000');
  });

  describe('operator secrets outside development', () => {
    const strongToken = 'Zq3v9Lr8Tn2Wx7Ky4Hb6Md1Pf5Gs0Ac';
    const strongPassword = 'Tq8-vLm2.Zr6Wx4Nb';

    it.each([
      ['KEEL_BOOTSTRAP_TOKEN', 'REPLACE-WITH-A-RANDOM-TOKEN', /placeholder/],
      ['KEEL_BOOTSTRAP_TOKEN', 'changeme-changeme-changeme', /placeholder/],
      ['KEEL_BOOTSTRAP_TOKEN', '<your operator token here>', /placeholder/],
      ['KEEL_BOOTSTRAP_TOKEN', 'aaaaaaaaaaaaaaaaaaaaaaaa', /too easy to guess/],
      ['KEEL_BOOTSTRAP_TOKEN', '1234567890123456', /too easy to guess/],
      ['KEEL_BOOTSTRAP_TOKEN', 'passwordpassword', /too easy to guess/],
      ['KEEL_ADMIN_PASSWORD', 'REPLACE-WITH-A-STRONG-PASSWORD', /placeholder/],
      ['KEEL_ADMIN_PASSWORD', 'password1234', /too easy to guess/],
      ['KEEL_ADMIN_PASSWORD', 'aaaaaaaaaaaa', /too easy to guess/],
      ['KEEL_ADMIN_PASSWORD', 'Password123!', /too easy to guess/],
    ])('refuses %s=%s in production (the default), without echoing it', (name, value, why) => {
      for (const env of [{ [name]: value }, { [name]: value, KEEL_ENV: 'production' }]) {
        const error = configError(env);
        expect(error.issues).toHaveLength(1);
        expect(error.issues[0]).toMatch(new RegExp(`^${name}: `));
        expect(error.issues[0]).toMatch(why);
        expect(error.message).not.toContain(value);
      }
    });

    it.each(['development', 'test'])('allows them with KEEL_ENV=%s (the lengths still count)', (KEEL_ENV) => {
      const config = parseConfig({ KEEL_ENV, KEEL_BOOTSTRAP_TOKEN: 'REPLACE-WITH-A-RANDOM-TOKEN', KEEL_ADMIN_PASSWORD: 'aaaaaaaaaaaa' });
      expect(config).toMatchObject({ KEEL_ENV, KEEL_BOOTSTRAP_TOKEN: 'REPLACE-WITH-A-RANDOM-TOKEN', KEEL_ADMIN_PASSWORD: 'aaaaaaaaaaaa' });
      expect(configError({ KEEL_ENV, KEEL_BOOTSTRAP_TOKEN: 'too-short' }).issues[0]).toMatch(/^KEEL_BOOTSTRAP_TOKEN: /);
    });

    it('accepts random secrets in production, and the ones npm start and the tests make', () => {
      expect(parseConfig({ KEEL_BOOTSTRAP_TOKEN: strongToken, KEEL_ADMIN_PASSWORD: strongPassword })).toMatchObject({ KEEL_ENV: 'production', KEEL_BOOTSTRAP_TOKEN: strongToken });
      expect(() => parseConfig({ KEEL_BOOTSTRAP_TOKEN: 'test-token-7f3a9c1e5b2d8046a1b2c3d4', KEEL_ADMIN_PASSWORD: 'kW3_pQ9zR7xT2mB5vN8cJ4hL' })).not.toThrow();
    });

    it('reports both secrets at once', () => {
      expect(configError({ KEEL_BOOTSTRAP_TOKEN: 'REPLACE-WITH-A-RANDOM-TOKEN', KEEL_ADMIN_PASSWORD: 'password1234' }).issues.map((i) => i.split(':')[0])).toEqual(['KEEL_BOOTSTRAP_TOKEN', 'KEEL_ADMIN_PASSWORD']);
    });

    it('refuses an unknown KEEL_ENV', () => {
      expect(configError({ KEEL_ENV: 'prod' }).issues).toEqual(['KEEL_ENV: must be production, development or test']);
    });
  });
});
