/**
 * Finds out whether NATS (with JetStream), Postgres and Redis answer at the configured URLs.
 * Each probe returns { state: 'ok', detail } | { state: 'down' } (nothing listens: connection
 * refused, so npm start may start its own) | { state: 'bad', problem } (something answers but
 * is not usable; starting another server on that port would not help).
 */
import { createRequire } from 'node:module';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { redact, UserError } from './log.mjs';

const TIMEOUT_MS = 3000;

/** `nats` and `pg` come from the workspace packages that depend on them (pnpm does not hoist them to the root). */
function workspaceRequire(root, pkgDir, name) {
  try {
    return createRequire(join(root, pkgDir, 'package.json'))(name);
  } catch {
    throw new UserError(`The ${name} package is not installed yet; run npm start (without --check) once so it installs the dependencies.`);
  }
}

const refused = (err) =>
  err?.code === 'ECONNREFUSED' || err?.code === 'CONNECTION_REFUSED' || (err?.errors?.length > 0 && err.errors.every(refused));

export async function probeNats(root, url) {
  const { connect } = workspaceRequire(root, 'libs/messaging', 'nats');
  let nc;
  try {
    nc = await connect({ servers: url.split(','), timeout: TIMEOUT_MS, reconnect: false });
  } catch (err) {
    if (refused(err)) return { state: 'down' };
    return { state: 'bad', problem: `NATS at ${redact(url)} did not accept a connection (${err.message}); check NATS_URL.` };
  }
  try {
    // The monitoring port may be off, so ask the JetStream API itself.
    const reply = await nc.request('$JS.API.INFO', new Uint8Array(0), { timeout: TIMEOUT_MS });
    const info = JSON.parse(new TextDecoder().decode(reply.data));
    if (info.error) {
      return { state: 'bad', problem: `NATS at ${redact(url)} refuses JetStream requests (${info.error.description}); enable JetStream for this account or point NATS_URL elsewhere.` };
    }
    return { state: 'ok', detail: `nats-server ${nc.info.version} with JetStream` };
  } catch (err) {
    // No responders (503): nothing serves $JS.API, so the server runs without JetStream.
    const why = err.code === '503' ? 'is running without JetStream' : `did not answer a JetStream request (${err.message})`;
    return { state: 'bad', problem: `NATS at ${redact(url)} ${why}; restart it with JetStream enabled (nats-server -js) or point NATS_URL at one that has it.` };
  } finally {
    await nc.close();
  }
}

export async function probePostgres(root, url) {
  const { Client } = workspaceRequire(root, 'libs/database', 'pg');
  // The database in the URL may not exist yet (the services create it), so connect to `postgres`.
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new Client({ connectionString: admin.toString(), connectionTimeoutMillis: TIMEOUT_MS });
  try {
    await client.connect();
    const { rows } = await client.query('SHOW server_version');
    return { state: 'ok', detail: `PostgreSQL ${rows[0].server_version}` };
  } catch (err) {
    if (refused(err)) return { state: 'down' };
    return { state: 'bad', problem: `Postgres at ${redact(url)} did not accept the connection (${err.message}); check DATABASE_URL (it needs a superuser).` };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Redis speaks a simple text protocol: AUTH when the URL has a password, then INFO for the version. */
export function probeRedis(url) {
  const u = new URL(url);
  const port = Number(u.port || 6379);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const resp = (...words) => `*${words.length}\r\n${words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join('')}`;
  const password = decodeURIComponent(u.password);
  const auth = password ? [u.username ? resp('AUTH', decodeURIComponent(u.username), password) : resp('AUTH', password)] : [];
  return new Promise((resolve) => {
    const socket = u.protocol === 'rediss:' ? tlsConnect({ host, port, servername: host }) : tcpConnect({ host, port });
    const done = (result) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(TIMEOUT_MS, () => done({ state: 'bad', problem: `Redis at ${redact(url)} did not answer within ${TIMEOUT_MS / 1000} s; check REDIS_URL.` }));
    socket.once('error', (err) =>
      done(refused(err) ? { state: 'down' } : { state: 'bad', problem: `Cannot reach Redis at ${redact(url)} (${err.message}); check REDIS_URL.` }),
    );
    socket.once(u.protocol === 'rediss:' ? 'secureConnect' : 'connect', () => socket.write(auth.join('') + resp('INFO', 'server')));
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      const error = buffer.match(/^-(.*)\r\n/m);
      if (error) return done({ state: 'bad', problem: `Redis at ${redact(url)} answered "${error[1]}"; check the credentials in REDIS_URL.` });
      const version = buffer.match(/redis_version:([^\r\n]+)/);
      if (version) done({ state: 'ok', detail: `Redis ${version[1]}` });
    });
  });
}
