import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { DataSource, MigrationInterface } from 'typeorm';

export interface ServiceSchema {
  schema: string;
  role: string;
  password: string;
  /** TypeORM migrations, run in order by the admin connection. */
  migrations: (new () => MigrationInterface)[];
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
const quoteLiteral = (value: string) => `'${value.replace(/'/g, "''")}'`;

/**
 * The SCRAM-SHA-256 verifier Postgres stores for a password (RFC 5802 / 7677, Postgres's own
 * format): sent instead of the secret, so a server that logs DDL (`log_statement = ddl`) never
 * writes a role's secret into its log. Keel's secrets are ASCII, which SASLprep leaves as is.
 */
export function scramVerifier(password: string, salt = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export function databaseName(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, '')) || 'keel';
}

/** Creates the database named in `adminUrl` if it does not exist. Safe to race. */
export async function ensureDatabase(adminUrl: string): Promise<void> {
  const name = databaseName(adminUrl);
  const client = new Client({ connectionString: withDatabase(adminUrl, 'postgres') });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (!rowCount) {
      await client.query(`CREATE DATABASE ${quoteIdent(name)}`).catch((e: { code?: string }) => {
        if (e.code !== '42P04' && e.code !== '23505') throw e;
      });
    }
  } finally {
    await client.end();
  }
}

export async function dropDatabase(adminUrl: string): Promise<void> {
  const client = new Client({ connectionString: withDatabase(adminUrl, 'postgres') });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(databaseName(adminUrl))} WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/**
 * Creates the database if needed, then a service's role (with `password` as its secret) and
 * schema, and runs its migrations, idempotently, under an advisory lock so parallel runs do not
 * race. The schema is owned by the admin, so the service role cannot alter or drop what the
 * migrations set up (triggers). Run by the provisioning step (`main.js --provision-only`) with
 * the admin URL, never by a service process, which is given only its own role's URL.
 */
export async function provisionServiceSchema(adminUrl: string, s: ServiceSchema): Promise<void> {
  await ensureDatabase(adminUrl);
  const client = new Client({ connectionString: adminUrl });
  // The lock is taken in the \`postgres\` database: advisory locks belong to one database, and roles,
  // their settings and database grants are catalog rows of the whole cluster, so provisioning two
  // databases at once (parallel test stacks, two deployments' Jobs) must share one lock: two
  // concurrent ALTER ROLE or GRANT on the same row fail with "tuple concurrently updated".
  const lock = new Client({ connectionString: withDatabase(adminUrl, 'postgres') });
  // A server restart while a session sits idle is an error on the client, not a crash: the step fails and is run again.
  for (const c of [client, lock]) c.on('error', () => undefined);
  await client.connect();
  try {
    await lock.connect();
    await lock.query('SELECT pg_advisory_lock(hashtext($1))', ['keel.provision']);
    const role = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [s.role]);
    if (!role.rowCount) {
      await client
        .query(`CREATE ROLE ${quoteIdent(s.role)} LOGIN PASSWORD ${quoteLiteral(scramVerifier(s.password))}`)
        .catch((e: { code?: string }) => {
          // Roles are cluster-wide: another database's provisioning may have just made it.
          if (e.code !== '42710' && e.code !== '23505') throw e;
        });
    }
    // The secret given here is the role's: set it every time, so a rotated secret takes effect
    // at the next provisioning (and a role made by an older start gets its own).
    await client.query(`ALTER ROLE ${quoteIdent(s.role)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD ${quoteLiteral(scramVerifier(s.password))}`);
    const db = databaseName(adminUrl);
    await client.query(`GRANT CONNECT ON DATABASE ${quoteIdent(db)} TO ${quoteIdent(s.role)}`);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(s.schema)}`);
    await client.query(`GRANT USAGE ON SCHEMA ${quoteIdent(s.schema)} TO ${quoteIdent(s.role)}`);
    await client.query(`ALTER ROLE ${quoteIdent(s.role)} IN DATABASE ${quoteIdent(db)} SET search_path = ${quoteIdent(s.schema)}`);
  } finally {
    // Ending the lock's session releases the lock.
    await lock.end().catch(() => undefined);
    await client.end();
  }
  const ds = new DataSource({
    type: 'postgres',
    url: adminUrl,
    schema: s.schema,
    migrations: s.migrations,
    migrationsTableName: 'schema_migrations',
    migrationsTransactionMode: 'each',
  });
  await ds.initialize();
  const migrating = ds.createQueryRunner();
  try {
    await migrating.connect();
    await migrating.query('SELECT pg_advisory_lock(hashtext($1))', [`keel.migrate.${s.schema}`]);
    await ds.runMigrations();
  } finally {
    await migrating.query('SELECT pg_advisory_unlock(hashtext($1))', [`keel.migrate.${s.schema}`]).catch(() => undefined);
    await migrating.release();
    await ds.destroy();
  }
}
