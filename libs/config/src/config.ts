import { isIP } from 'node:net';
import { z } from 'zod';
import { secretProblem } from './secret-strength';

const port = z.coerce.number().int().min(0).max(65535);

/** Why `value` is not an address or CIDR block (undefined when it is one). */
function cidrProblem(value: string): string | undefined {
  const [address, prefix, extra] = value.split('/');
  const family = isIP(address ?? '');
  if (!family || extra !== undefined) return 'is not an IP address or CIDR block (e.g. 10.0.0.0/8)';
  if (prefix === undefined) return undefined;
  if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > (family === 4 ? 32 : 128)) return `has a bad prefix length (at most ${family === 4 ? 32 : 128})`;
  return undefined;
}

/**
 * Every setting Keel reads from the environment, validated once at start-up.
 * Nothing else in the codebase reads `process.env`.
 */
export const configSchema = z.object({
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  DATABASE_URL: z.string().url().default('postgres://postgres@127.0.0.1:5432/keel'),
  REDIS_URL: z.string().default('redis://127.0.0.1:6379'),
  /**
   * The fallback secret of a service role that has no `KEEL_DB_PASSWORD_<SERVICE>` of its own
   * (read by provisioning, and by a service given the admin URL instead of its own).
   */
  KEEL_DB_PASSWORD: z.string().default('keel'),
  /** `KEEL_DB_PASSWORD_<SERVICE>` (e.g. KEEL_DB_PASSWORD_TENANT for role keel_tenant): each role's own secret, collected by parseConfig. */
  KEEL_DB_ROLE_PASSWORDS: z.record(z.string(), z.string().min(1)).default({}),
  KEEL_STREAM: z.string().regex(/^[A-Za-z0-9_-]+$/).default('EVENTS'),
  KEEL_SUBJECT_PREFIX: z
    .string()
    .regex(/^([a-z0-9_-]+\.)?$/, 'empty, or a lowercase token followed by a dot')
    .default(''),
  KEEL_STREAM_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  KEEL_REDIS_PREFIX: z.string().default('keel:'),
  KEEL_HTTP_HOST: z.string().default('127.0.0.1'),
  KEEL_HTTP_PORT: port.default(8080),
  KEEL_OPS_PORT: port.optional(),
  /**
   * Where this process runs: `production` (the default) refuses placeholder and guessable operator
   * secrets (KEEL_BOOTSTRAP_TOKEN, KEEL_ADMIN_PASSWORD) at start-up; `development` and `test` only
   * check their lengths (secret-strength.ts).
   */
  KEEL_ENV: z.enum(['production', 'development', 'test'], { message: 'must be production, development or test' }).default('production'),
  KEEL_BOOTSTRAP_TOKEN: z.string().min(16).optional(),
  /** The first platform administrator, created at the auth service's start when none exists. */
  KEEL_ADMIN_EMAIL: z.email().optional(),
  KEEL_ADMIN_PASSWORD: z.string().min(12).optional(),
  /** Every Postgres pool: how long a new connection may take, a statement may run, a transaction may sit idle. */
  KEEL_DB_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).default(5_000),
  KEEL_DB_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(100).default(30_000),
  KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: z.coerce.number().int().min(100).default(15_000),
  KEEL_REQUEST_TIMEOUT_MS: z.coerce.number().int().min(100).default(5000),
  KEEL_CONSISTENCY_WAIT_MS: z.coerce.number().int().min(0).default(3000),
  /** A signed ledger checkpoint after this many entries (and at least every KEEL_CHECKPOINT_INTERVAL_MS). */
  KEEL_CHECKPOINT_EVERY: z.coerce.number().int().min(1).default(1000),
  KEEL_CHECKPOINT_INTERVAL_MS: z.coerce.number().int().min(100).default(60_000),
  /**
   * The window over which a gateway counts one principal's 403 refusals: the first of a window is
   * recorded at once (`security.access.denied`), the rest as one count when the window closes.
   */
  KEEL_DENIAL_WINDOW_SECONDS: z.coerce.number().int().min(1).max(3_600).default(60),
  /** Key-encryption key (32 bytes, base64) under which secrets such as signing keys are stored. */
  KEEL_KEK: z
    .string()
    .refine((v) => Buffer.from(v, 'base64').length === 32, 'must be 32 bytes, base64-encoded (openssl rand -base64 32)')
    .optional(),
  /**
   * Development only: an identity provider's issuer (and the URLs its discovery names) may be
   * plain `http://` to a loopback address. Off by default: outbound fetches are https to public
   * addresses only (libs/outbound/src/safe-fetch.ts).
   */
  KEEL_SSO_ALLOW_HTTP_LOOPBACK: z.enum(['true', 'false'], { message: 'must be true or false' }).default('false').transform((v) => v === 'true'),
  /**
   * Webhook deliveries (the billing service): the first retry's delay (each next one 3 times the
   * last, at most 6 hours, ±10 % jitter), the attempts per delivery, the failed attempts in a row
   * after which a subscription is disabled, and how long a receiver may take to answer.
   */
  KEEL_WEBHOOK_RETRY_BASE_MS: z.coerce.number().int().min(1).default(30_000),
  KEEL_WEBHOOK_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(100).default(10),
  KEEL_WEBHOOK_DISABLE_AFTER: z.coerce.number().int().min(1).default(30),
  KEEL_WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(60_000).default(10_000),
  /** Development only: a webhook may be plain `http://` to a loopback address (as KEEL_SSO_ALLOW_HTTP_LOOPBACK for identity providers). */
  KEEL_WEBHOOK_ALLOW_HTTP_LOOPBACK: z.enum(['true', 'false'], { message: 'must be true or false' }).default('false').transform((v) => v === 'true'),
  /**
   * Invoices (the billing service): how long a closed month's draft waits for late usage before it
   * is finalized, and how often each billing process looks for months to close and drafts to finalize.
   */
  KEEL_INVOICE_GRACE_SECONDS: z.coerce.number().int().min(0).default(259_200),
  KEEL_INVOICE_CLOSE_INTERVAL_MS: z.coerce.number().int().min(100).default(60_000),
  /** How often each billing process compares every budget's Redis counter with Postgres (drift). */
  KEEL_BUDGET_DRIFT_INTERVAL_MS: z.coerce.number().int().min(100).default(60_000),
  /** How often each billing process projects budgets to their period's end (raising `projected_to_exceed`). */
  KEEL_FORECAST_INTERVAL_MS: z.coerce.number().int().min(100).default(300_000),
  KEEL_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  KEEL_INSTANCE_ID: z.string().optional(),
  /**
   * The gateway's reverse proxies / load balancers, comma-separated CIDR blocks or addresses
   * (e.g. `10.0.0.0/8,192.168.1.10`). `X-Forwarded-For` (and `-Proto`, `-Host`) is honoured
   * only from a peer in them; the client is the rightmost address not in them. Empty (the
   * default): no proxy is trusted and the peer's address is the client.
   */
  KEEL_TRUSTED_PROXIES: z.string().default('').transform((v, ctx) => {
    const entries = v.split(',').map((e) => e.trim()).filter(Boolean);
    for (const entry of entries) {
      const problem = cidrProblem(entry);
      if (problem) ctx.addIssue({ code: 'custom', message: `"${entry}" ${problem}` });
    }
    return entries;
  }),
  /** TLS on the gateway: PEM certificate (chain) and private key files, both or neither. TLS 1.2 minimum. */
  KEEL_TLS_CERT: z.string().optional(),
  KEEL_TLS_KEY: z.string().optional(),
  /**
   * Requests per minute one client address (an IPv6 client's /64) may make to the
   * unauthenticated routes that do work (sign-in, refresh, SSO start and callback); 0 turns
   * the limit off. Counted across gateways in Redis.
   */
  KEEL_PUBLIC_RATE_LIMIT_PER_MINUTE: z.coerce.number().int().min(0).default(120),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
});

export type KeelConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(readonly issues: string[]) {
    super(`invalid configuration: ${issues.join('; ')}`);
  }
}

const ROLE_PASSWORD = /^KEEL_DB_PASSWORD_([A-Z0-9_]+)$/;

export function parseConfig(env: Record<string, string | undefined>): KeelConfig {
  const present: Record<string, unknown> = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const rolePasswords: Record<string, string> = {};
  for (const [key, value] of Object.entries(present)) {
    const m = ROLE_PASSWORD.exec(key);
    if (m) {
      rolePasswords[`keel_${m[1]!.toLowerCase()}`] = value as string;
      delete present[key];
    }
  }
  delete present.KEEL_DB_ROLE_PASSWORDS;
  if (Object.keys(rolePasswords).length) present.KEEL_DB_ROLE_PASSWORDS = rolePasswords;
  const result = configSchema.safeParse(present);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
  }
  if (result.data.KEEL_ENV === 'production') {
    const weak: string[] = [];
    for (const [key, kind] of [['KEEL_BOOTSTRAP_TOKEN', 'token'], ['KEEL_ADMIN_PASSWORD', 'password']] as const) {
      const value = result.data[key];
      const problem = value === undefined ? undefined : secretProblem(value, kind);
      if (problem) weak.push(`${key}: ${problem} (KEEL_ENV=development allows it on a developer's machine)`);
    }
    if (weak.length) throw new ConfigError(weak);
  }
  if (Boolean(result.data.KEEL_TLS_CERT) !== Boolean(result.data.KEEL_TLS_KEY)) {
    throw new ConfigError([`${result.data.KEEL_TLS_CERT ? 'KEEL_TLS_KEY' : 'KEEL_TLS_CERT'}: set KEEL_TLS_CERT and KEEL_TLS_KEY together (both or neither)`]);
  }
  return result.data;
}

let loaded: KeelConfig | undefined;

/** The process's configuration, parsed from the environment on first use. */
export function loadConfig(): KeelConfig {
  loaded ??= parseConfig(process.env);
  return loaded;
}

/** The secret of a service's database role: its `KEEL_DB_PASSWORD_<SERVICE>`, else `KEEL_DB_PASSWORD`. */
export function rolePassword(config: KeelConfig, role: string): string {
  return config.KEEL_DB_ROLE_PASSWORDS[role] ?? config.KEEL_DB_PASSWORD;
}

/**
 * Connection string for a service's own database role, with the pool timeouts. A service
 * process is given its own role's URL as DATABASE_URL (provisioning alone gets the admin URL):
 * that is used as it is. Given another user's URL (tests that run a service in-process with
 * the admin URL), the role and its secret are put in its place.
 */
export function serviceDatabaseUrl(config: KeelConfig, role: string): string {
  const url = new URL(config.DATABASE_URL);
  if (decodeURIComponent(url.username) !== role) {
    url.username = role;
    url.password = rolePassword(config, role);
  }
  return withPoolTimeouts(url, config).toString();
}

/**
 * The pool timeouts as connection-string parameters, which `openDataSource` reads:
 * `connect_timeout` (seconds, as libpq reads it), and `statement_timeout` and
 * `idle_in_transaction_session_timeout` (milliseconds, Postgres's own settings). A parameter
 * already in the URL is kept.
 */
export function withPoolTimeouts(url: URL, config: KeelConfig): URL {
  const u = new URL(url.toString());
  const set = (k: string, v: number) => {
    if (!u.searchParams.has(k)) u.searchParams.set(k, String(v));
  };
  set('connect_timeout', Math.ceil(config.KEEL_DB_CONNECT_TIMEOUT_MS / 1000));
  set('statement_timeout', config.KEEL_DB_STATEMENT_TIMEOUT_MS);
  set('idle_in_transaction_session_timeout', config.KEEL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS);
  return u;
}
