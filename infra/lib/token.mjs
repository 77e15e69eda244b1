import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from './log.mjs';

const MIN_LENGTH = 16;

/**
 * A secret made here, in hex: its letters (a–f) spell none of the words the start-up check
 * refuses as a template's placeholder ("todo", "dummy", "xxxx"…), which base64 letters can (a
 * made password once held "tOdO" and auth refused to start).
 */
const madeSecret = (bytes) => randomBytes(bytes).toString('hex');

/**
 * The operator's bearer token: KEEL_BOOTSTRAP_TOKEN when set, else one made on the first start
 * and kept in .keel/bootstrap-token (readable by this user only), so restarts keep it.
 */
export function bootstrapToken(keelDir, fromEnv) {
  if (fromEnv) {
    if (fromEnv.length < MIN_LENGTH) {
      throw new UserError(`KEEL_BOOTSTRAP_TOKEN is shorter than ${MIN_LENGTH} characters; set a longer one, or unset it and npm start will make one.`);
    }
    return { token: fromEnv, source: 'KEEL_BOOTSTRAP_TOKEN' };
  }
  const file = join(keelDir, 'bootstrap-token');
  if (existsSync(file)) {
    const token = readFileSync(file, 'utf8').trim();
    if (token.length < MIN_LENGTH) {
      throw new UserError(`${file} holds no usable token (${MIN_LENGTH}+ characters); delete it and npm start will make a new one.`);
    }
    return { token, source: '.keel/bootstrap-token' };
  }
  const token = madeSecret(24);
  mkdirSync(keelDir, { recursive: true });
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { token, source: '.keel/bootstrap-token (new)' };
}

/**
 * The key-encryption key (32 bytes, base64) that seals secrets such as the ledger's signing
 * key: KEEL_KEK when set, else one made on the first start and kept in .keel/kek. Losing it
 * loses those secrets, so it is kept as carefully as the data.
 */
export function keyEncryptionKey(keelDir, fromEnv) {
  const valid = (v) => Buffer.from(v, 'base64').length === 32;
  if (fromEnv) {
    if (!valid(fromEnv)) throw new UserError('KEEL_KEK must be 32 bytes in base64 (openssl rand -base64 32); fix it, or unset it and npm start will make one.');
    return fromEnv;
  }
  const file = join(keelDir, 'kek');
  if (existsSync(file)) {
    const kek = readFileSync(file, 'utf8').trim();
    if (!valid(kek)) throw new UserError(`${file} holds no usable key (32 bytes, base64); restore it from a backup.`);
    return kek;
  }
  const kek = randomBytes(32).toString('base64');
  mkdirSync(keelDir, { recursive: true });
  writeFileSync(file, `${kek}\n`, { mode: 0o600 });
  return kek;
}

/**
 * The first platform administrator: KEEL_ADMIN_EMAIL and KEEL_ADMIN_PASSWORD when set, else
 * admin@keel.local with a password made on the first start and kept in .keel/admin-password.
 * The auth service creates this user only when no platform user exists yet.
 */
export function firstAdmin(keelDir, email, password) {
  const address = email || 'admin@keel.local';
  if (password) {
    if (password.length < 12) throw new UserError('KEEL_ADMIN_PASSWORD is shorter than 12 characters; set a longer one, or unset it and npm start will make one.');
    return { email: address, password, source: 'KEEL_ADMIN_PASSWORD' };
  }
  const file = join(keelDir, 'admin-password');
  if (existsSync(file)) return { email: address, password: readFileSync(file, 'utf8').trim(), source: '.keel/admin-password' };
  const made = madeSecret(16);
  mkdirSync(keelDir, { recursive: true });
  writeFileSync(file, `${made}\n`, { mode: 0o600 });
  return { email: address, password: made, source: '.keel/admin-password (new)' };
}

/**
 * Each service role's own database secret: its KEEL_DB_PASSWORD_<SERVICE> (the manifest entry's
 * `passwordEnv`) when set, else one made on the first start and kept in .keel/db-password-<service>.
 * Provisioning sets it on the role (every start, so a changed one takes effect); the service alone
 * is given it, inside its URL.
 */
export function rolePasswords(keelDir, env, services) {
  const out = {};
  for (const { name, passwordEnv: key } of services) {
    if (env[key]) {
      out[name] = { password: env[key], source: key };
      continue;
    }
    const file = join(keelDir, `db-password-${name}`);
    if (existsSync(file)) {
      const password = readFileSync(file, 'utf8').trim();
      if (!password) throw new UserError(`${file} is empty; delete it and npm start will make a new secret for the ${name} role.`);
      out[name] = { password, source: `.keel/db-password-${name}` };
      continue;
    }
    const password = randomBytes(24).toString('base64url');
    mkdirSync(keelDir, { recursive: true });
    writeFileSync(file, `${password}\n`, { mode: 0o600 });
    out[name] = { password, source: `.keel/db-password-${name} (new)` };
  }
  return out;
}

/** The URL a service connects with: the admin URL's server and database, the service's role and secret. */
export function roleUrl(adminUrl, role, password) {
  const url = new URL(adminUrl);
  url.username = role;
  url.password = password;
  return url.toString();
}
