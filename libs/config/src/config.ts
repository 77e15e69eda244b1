import { z } from 'zod';

const port = z.coerce.number().int().min(0).max(65535);

/**
 * Every setting Keel reads from the environment, validated once at start-up.
 * Nothing else in the codebase reads `process.env`.
 */
export const configSchema = z.object({
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  DATABASE_URL: z.string().url().default('postgres://postgres@127.0.0.1:5432/keel'),
  REDIS_URL: z.string().default('redis://127.0.0.1:6379'),
  KEEL_DB_PASSWORD: z.string().default('keel'),
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
  /** Key-encryption key (32 bytes, base64) under which secrets such as signing keys are stored. */
  KEEL_KEK: z
    .string()
    .refine((v) => Buffer.from(v, 'base64').length === 32, 'must be 32 bytes, base64-encoded (openssl rand -base64 32)')
    .optional(),
  KEEL_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  KEEL_INSTANCE_ID: z.string().optional(),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
});

export type KeelConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(readonly issues: string[]) {
    super(`invalid configuration: ${issues.join('; ')}`);
  }
}

export function parseConfig(env: Record<string, string | undefined>): KeelConfig {
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const result = configSchema.safeParse(present);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
  }
  return result.data;
}

let loaded: KeelConfig | undefined;

/** The process's configuration, parsed from the environment on first use. */
export function loadConfig(): KeelConfig {
  loaded ??= parseConfig(process.env);
  return loaded;
}

/** Connection string for a service's own database role, derived from the admin URL. */
export function serviceDatabaseUrl(config: KeelConfig, role: string): string {
  const url = new URL(config.DATABASE_URL);
  url.username = role;
  url.password = config.KEEL_DB_PASSWORD;
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
