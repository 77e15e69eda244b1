/**
 * `npm start`: Keel on one machine.
 *
 *   node infra/start.mjs             install dependencies if needed, build, start everything
 *   node infra/start.mjs --no-build  the same without install and build
 *   node infra/start.mjs --check     report what answers at NATS_URL, DATABASE_URL and REDIS_URL,
 *                                    then exit (0 when all three are usable)
 *
 * NATS (with JetStream), Postgres and Redis are used where their URLs point, or started from
 * local binaries with data under .keel/ when a loopback URL has nothing behind it. Then the
 * provisioning step runs with the admin URL (DATABASE_URL): each service's role (with its own
 * secret), schema and migrations, `main.js --provision-only` per service with a database. Then
 * the backends start, each with only its own role's URL, and once they are ready, the gateway (no
 * database URL at all). Ctrl-C or SIGTERM stops the services, then the servers npm start started.
 * The services, their ports and what each is given come from services.manifest.json.
 *
 * It reads Keel's own environment variables (see libs/config), plus one per backend:
 * KEEL_<SERVICE>_OPS_PORT (e.g. KEEL_TENANT_OPS_PORT; default: the service's port in the
 * manifest), the ops port (/health, /ready, /metrics) of that service; KEEL_OPS_PORT is per
 * process, so it is set here for each of them. KEEL_HTTP_PORT is the gateway's.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { installAndBuild } from './lib/build.mjs';
import { checkInfra, ensureInfra, stopInfra } from './lib/infra.mjs';
import { say, UserError } from './lib/log.mjs';
import { PidFiles, portInUse, run } from './lib/proc.mjs';
import { dataServices, loadManifest, startOrder, stopOrder } from './lib/manifest.mjs';
import { Service } from './lib/services.mjs';
import { bootstrapToken, firstAdmin, keyEncryptionKey, rolePasswords, roleUrl } from './lib/token.mjs';

const READY_TIMEOUT_MS = 180_000;
const OPTIONS = ['--no-build', '--check'];

const root = fileURLToPath(new URL('..', import.meta.url));
const keelDir = join(root, '.keel');
const env = process.env;

/** Where a client on this machine reaches a server bound to `host` (a wildcard means loopback). */
function reachableHost(host) {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

function setting(name, fallback) {
  const value = env[name] || fallback;
  if (name.endsWith('_PORT') && !(/^\d+$/.test(value) && Number(value) > 0 && Number(value) < 65536)) {
    throw new UserError(`${name} is not a port number (${value}); set it to one between 1 and 65535.`);
  }
  if (name.endsWith('_URL')) {
    try {
      new URL(value.split(',')[0]);
    } catch {
      throw new UserError(`${name} is not a valid URL (${value}); fix it or unset it to use the default.`);
    }
  }
  return value;
}

const ctx = {
  root,
  keelDir,
  pids: new PidFiles(join(keelDir, 'run')),
  started: [],
  stopping: false,
};
const services = [];
let ownsLock = false;
let shuttingDown;

/** Services first (the gateways before the processes they call), then the servers they use. */
function shutdown(exitCode) {
  shuttingDown ??= (async () => {
    ctx.stopping = true;
    const isGateway = (s) => s.kind === 'gateway';
    await Promise.all(services.filter(isGateway).map((s) => s.stop()));
    await Promise.all(services.filter((s) => !isGateway(s)).map((s) => s.stop()));
    await stopInfra(ctx);
    if (ownsLock) ctx.pids.forget('start');
    if (services.length || ctx.started.length) say('stopped');
    process.exit(exitCode);
  })();
  return shuttingDown;
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (shuttingDown) return say('still stopping, please wait');
    say(`${signal} received, stopping`);
    void shutdown(0);
  });
}

function printBanner(gatewayUrl, token, admin) {
  const lines = [
    '',
    'Keel is running.',
    `  Gateway:         ${gatewayUrl}`,
    `  API docs:        ${gatewayUrl}/docs`,
    `  Operator token:  ${token.token}   (from ${token.source}; break-glass only)`,
    `  Platform admin:  ${admin.email} / ${admin.password}   (from ${admin.source})`,
    '  Try:',
    `    curl -H "Authorization: Bearer ${token.token}" ${gatewayUrl}/api/v1/tenants`,
    `    curl -X POST ${gatewayUrl}/api/v1/auth/login -H 'Content-Type: application/json' -d '{"email":"${admin.email}","password":"${admin.password}"}'`,
    '',
    'Press Ctrl-C to stop.',
    '',
  ];
  console.log(lines.join('\n'));
}

async function main() {
  const args = process.argv.slice(2);
  const unknown = args.find((a) => !OPTIONS.includes(a));
  if (unknown) throw new UserError(`Unknown option ${unknown}; the options are ${OPTIONS.join(' and ')}.`);

  ctx.urls = {
    nats: setting('NATS_URL', 'nats://127.0.0.1:4222'),
    postgres: setting('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/keel'),
    redis: setting('REDIS_URL', 'redis://127.0.0.1:6379'),
  };
  if (args.includes('--check')) {
    process.exit((await checkInfra(ctx)) ? 0 : 1);
  }

  const other = ctx.pids.running('start', 'start.mjs');
  if (other && other !== process.pid) {
    throw new UserError(`Keel is already running from this directory (npm start, pid ${other}); stop that one first.`);
  }
  ctx.pids.record('start', process.pid);
  ownsLock = true;

  if (!args.includes('--no-build')) await installAndBuild(root);
  const MANIFEST = loadManifest(root);
  for (const { script } of MANIFEST) {
    if (!existsSync(join(root, script))) {
      throw new UserError(`${script} does not exist; run npm start without --no-build (or npm run build) first.`);
    }
  }
  const token = bootstrapToken(keelDir, env.KEEL_BOOTSTRAP_TOKEN);
  const kek = keyEncryptionKey(keelDir, env.KEEL_KEK);
  const admin = firstAdmin(keelDir, env.KEEL_ADMIN_EMAIL, env.KEEL_ADMIN_PASSWORD);
  /** The secrets a manifest line may name; any other comes from the environment as it is. */
  const secretValues = { KEEL_BOOTSTRAP_TOKEN: token.token, KEEL_KEK: kek, KEEL_ADMIN_EMAIL: admin.email, KEEL_ADMIN_PASSWORD: admin.password };
  const httpHost = setting('KEEL_HTTP_HOST', '127.0.0.1');
  const host = reachableHost(httpHost);
  const ports = Object.fromEntries(MANIFEST.map((s) => [s.startPortEnv, setting(s.startPortEnv, String(s.port))]));

  // Services an earlier, hard-killed npm start left behind go first, before the servers they use.
  for (const s of stopOrder(MANIFEST)) await ctx.pids.stopLeftover(s.name, join(root, s.script), 'SIGTERM');
  // Something else on a port would answer the readiness checks in our services' place.
  for (const [name, port] of Object.entries(ports)) {
    if (await portInUse(httpHost, port)) {
      throw new UserError(`Port ${port} on ${httpHost} is already in use (${name}); stop what listens there or set ${name} to a free port.`);
    }
  }
  await ensureInfra(ctx);

  // With KEEL_TLS_CERT and KEEL_TLS_KEY the gateway serves HTTPS (its ops routes too: one port).
  const gatewayScheme = env.KEEL_TLS_CERT && env.KEEL_TLS_KEY ? 'https' : 'http';
  const gatewayUrl = `${gatewayScheme}://${host}:${ports.KEEL_HTTP_PORT}`;
  const secrets = rolePasswords(keelDir, env, dataServices(MANIFEST));
  const shared = { ...env, NATS_URL: ctx.urls.nats, REDIS_URL: ctx.urls.redis, KEEL_HTTP_HOST: httpHost };
  // The admin URL and the roles' secrets are for the provisioning step only; the other secrets
  // go only to the services whose manifest line names them.
  delete shared.DATABASE_URL;
  for (const key of Object.keys(shared)) if (/^KEEL_DB_PASSWORD(_|$)/.test(key)) delete shared[key];
  delete shared.KEEL_OPS_PORT;
  delete shared.KEEL_HTTP_PORT;
  for (const key of [...Object.keys(secretValues), ...MANIFEST.flatMap((s) => s.secrets)]) delete shared[key];
  const service = (s) => {
    const own = s.database ? { DATABASE_URL: roleUrl(ctx.urls.postgres, s.role, secrets[s.name].password) } : {};
    const given = Object.fromEntries(s.secrets.map((k) => [k, secretValues[k] ?? env[k]]).filter(([, v]) => v !== undefined));
    const port = ports[s.startPortEnv];
    const readyUrl = `${s.kind === 'gateway' ? gatewayScheme : 'http'}://${host}:${port}/ready`;
    return new Service({ name: s.name, kind: s.kind, root, script: s.script, env: { ...shared, ...own, ...given, [s.portEnv]: port }, readyUrl, pids: ctx.pids });
  };

  // Provisioning: with the admin URL, one service after the other (roles are cluster-wide).
  const provisioning = { ...shared, DATABASE_URL: ctx.urls.postgres };
  for (const s of dataServices(MANIFEST)) provisioning[s.passwordEnv] = secrets[s.name].password;
  for (const s of dataServices(MANIFEST)) {
    say(`provisioning ${s.name} (role ${s.role}, schema and migrations)`);
    await run(process.execPath, [join(root, s.script), '--provision-only'], {
      cwd: root,
      env: provisioning,
      hint: `check DATABASE_URL (the admin URL, a superuser); see the ${s.name} log above`,
    });
  }

  // The backends together, then the gateways once every backend is ready.
  for (const kind of ['backend', 'gateway']) {
    const group = startOrder(MANIFEST).filter((s) => s.kind === kind).map(service);
    if (!group.length) continue;
    say(`starting ${group.map((s) => s.name).join(', ')}`);
    for (const s of group) {
      services.push(s);
      s.start();
    }
    await Promise.all(group.map((s) => s.waitReady(READY_TIMEOUT_MS)));
  }
  printBanner(gatewayUrl, token, admin);
}

main().catch((err) => {
  if (shuttingDown) return;
  console.error(err instanceof UserError ? `[keel] error: ${err.message}` : err);
  void shutdown(1);
});
