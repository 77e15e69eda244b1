/**
 * services.manifest.json: every Keel process, one line each. This module reads and checks it
 * and derives what its readers need (role, secrets' variables, ports, entry point); the same
 * derivation in TypeScript is libs/service-kit/src/manifest.ts, and test/infra.spec.ts checks
 * that both agree.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from './log.mjs';

export const MANIFEST_FILE = 'services.manifest.json';
const KINDS = ['backend', 'gateway'];
const FIELDS = ['name', 'kind', 'port', 'database', 'replicas', 'secrets'];

/** A manifest that cannot be used: `npm start` prints it as one sentence. */
class ManifestError extends UserError {}

/** The services of the manifest at `file` (default: the repository's), checked, with what follows from each. */
export function loadManifest(root, file = join(root, MANIFEST_FILE)) {
  let raw;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ManifestError(`${file} is not readable JSON (${err.message}); fix it.`);
  }
  if (!Array.isArray(raw?.services) || raw.services.length === 0) throw new ManifestError(`${file} lists no services (a "services" array).`);
  const services = raw.services.map((entry, i) => describe(entry, `${file}: services[${i}]`));
  for (const key of ['name', 'port']) {
    const seen = new Set();
    for (const s of services) {
      if (seen.has(s[key])) throw new ManifestError(`${file}: two services have the ${key} ${s[key]}; each needs its own.`);
      seen.add(s[key]);
    }
  }
  return services;
}

function describe(entry, where) {
  const unknown = Object.keys(entry ?? {}).filter((k) => !FIELDS.includes(k));
  if (unknown.length) throw new ManifestError(`${where} has unknown fields (${unknown.join(', ')}); the fields are ${FIELDS.join(', ')}.`);
  const { name, kind, port, database = false, replicas = 2, secrets = [] } = entry;
  if (typeof name !== 'string' || !/^[a-z][a-z0-9-]{1,30}$/.test(name)) throw new ManifestError(`${where}: name must be lowercase letters, digits and dashes (got ${JSON.stringify(name)}).`);
  if (!KINDS.includes(kind)) throw new ManifestError(`${where} (${name}): kind must be ${KINDS.join(' or ')}.`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ManifestError(`${where} (${name}): port must be a port number.`);
  if (typeof database !== 'boolean') throw new ManifestError(`${where} (${name}): database must be true or false.`);
  if (database && kind === 'gateway') throw new ManifestError(`${where} (${name}): a gateway holds nothing durable, so it has no database.`);
  if (!Number.isInteger(replicas) || replicas < 1) throw new ManifestError(`${where} (${name}): replicas must be a whole number of at least 1.`);
  if (!Array.isArray(secrets) || !secrets.every((s) => typeof s === 'string' && /^KEEL_[A-Z0-9_]+$/.test(s))) {
    throw new ManifestError(`${where} (${name}): secrets must be a list of KEEL_* variable names.`);
  }
  const token = name.replace(/-/g, '_');
  return {
    name,
    kind,
    port,
    database,
    replicas,
    secrets,
    /** Its database role (libs/config maps KEEL_DB_PASSWORD_<NAME> to keel_<name>). */
    role: database ? `keel_${token}` : undefined,
    passwordEnv: database ? `KEEL_DB_PASSWORD_${token.toUpperCase()}` : undefined,
    /** The variable the process reads its port from. */
    portEnv: kind === 'gateway' ? 'KEEL_HTTP_PORT' : 'KEEL_OPS_PORT',
    /** The variable `npm start` reads that port from (KEEL_OPS_PORT is per process). */
    startPortEnv: kind === 'gateway' ? 'KEEL_HTTP_PORT' : `KEEL_${token.toUpperCase()}_OPS_PORT`,
    script: `services/${name}/dist/main.js`,
  };
}

/** Provisioning first (the services with data, in manifest order), then the backends, then the gateways. */
export const startOrder = (services) => [...services.filter((s) => s.kind === 'backend'), ...services.filter((s) => s.kind === 'gateway')];
/** The gateways first (they call the backends), then the backends, last started first. */
export const stopOrder = (services) => [...startOrder(services)].reverse();
export const dataServices = (services) => services.filter((s) => s.database);

export { ManifestError };
