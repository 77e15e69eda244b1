/**
 * NATS, Postgres and Redis for `npm start`: use what answers at the configured URLs, or start
 * a local server for a loopback URL that nothing answers, with its data under .keel/<name> so
 * it survives restarts. Started servers run in the foreground as npm start's children (never
 * daemonized), with their output in .keel/logs/<name>.log.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { redact, say, warn, UserError } from './log.mjs';
import { findExecutable, run, spawnDetached, stopChild } from './proc.mjs';
import { probeNats, probePostgres, probeRedis } from './probe.mjs';

const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 30_000;
const PG_ROOT = '/usr/lib/postgresql';

const hostOf = (url) => new URL(url).hostname.replace(/^\[|\]$/g, '');
const portOf = (url, fallback) => String(new URL(url).port || fallback);
/** Only a single loopback server is started locally; anything else is someone else's to run. */
const startable = (url) => !url.includes(',') && /^(localhost|127\.\d+\.\d+\.\d+|::1)$/.test(hostOf(url));

/** Debian keeps each major version in /usr/lib/postgresql/<ver>/bin; an existing cluster needs its own version. */
function postgresBinDir(dataDir) {
  const versions = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT).filter((v) => existsSync(join(PG_ROOT, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a))
    : [];
  const versionFile = join(dataDir, 'PG_VERSION');
  if (existsSync(versionFile)) {
    const wanted = readFileSync(versionFile, 'utf8').trim();
    if (versions.includes(wanted)) return join(PG_ROOT, wanted, 'bin');
    if (versions.length) {
      throw new UserError(`${dataDir} holds a PostgreSQL ${wanted} cluster but only ${versions.join(', ')} is installed; install postgresql-${wanted} or delete ${dataDir} to start afresh.`);
    }
  }
  if (versions.length) return join(PG_ROOT, versions[0], 'bin');
  const postgres = findExecutable('postgres');
  return postgres && findExecutable('initdb') ? join(postgres, '..') : undefined;
}

/**
 * initdb and postgres refuse to run as root, so as root they run as the `postgres` user
 * (spawned with its uid directly: runuser in between would SIGKILL postgres 2 s after a stop).
 */
async function postgresOwner(dir) {
  if (process.getuid() !== 0) return {};
  let uid;
  let gid;
  try {
    uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }));
    gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }));
  } catch {
    throw new UserError('Postgres refuses to run as root and there is no `postgres` user to run it as; create one (useradd --system postgres) or run npm start as a regular user.');
  }
  await run('chown', ['-R', `${uid}:${gid}`, dir]);
  if (spawnSync('test', ['-w', dir], { uid, gid }).status !== 0) {
    throw new UserError(`The postgres user cannot write to ${dir} because a parent directory is closed to it; move the repository somewhere others can read, or point DATABASE_URL at a running Postgres.`);
  }
  return { uid, gid };
}

const SERVERS = [
  {
    name: 'nats',
    label: 'NATS',
    envVar: 'NATS_URL',
    aptPackage: 'nats-server',
    program: 'nats-server',
    stopSignal: 'SIGTERM',
    installed: () => Boolean(findExecutable('nats-server')),
    probe: (ctx, url) => probeNats(ctx.root, url),
    async prepare(ctx, url, dir) {
      const args = ['-a', hostOf(url), '-p', portOf(url, 4222), '-js', '-sd', dir];
      return { cmd: findExecutable('nats-server'), args, options: { cwd: dir } };
    },
  },
  {
    name: 'postgres',
    label: 'Postgres',
    envVar: 'DATABASE_URL',
    aptPackage: 'postgresql',
    program: 'postgres',
    // SIGINT is Postgres's "fast" shutdown: it does not wait for idle clients to leave.
    stopSignal: 'SIGINT',
    installed: (ctx) => Boolean(postgresBinDir(join(ctx.keelDir, 'postgres', 'data'))),
    probe: (ctx, url) => probePostgres(ctx.root, url),
    async prepare(ctx, url, dir, log) {
      const data = join(dir, 'data');
      const sockets = join(dir, 'run');
      const bin = postgresBinDir(data);
      mkdirSync(sockets, { recursive: true });
      const owner = await postgresOwner(dir);
      if (!existsSync(join(data, 'PG_VERSION'))) {
        say(`creating a Postgres cluster in ${relative(ctx.root, data)}`);
        const superuser = decodeURIComponent(new URL(url).username) || 'postgres';
        await run(join(bin, 'initdb'), ['-D', data, '-U', superuser, '--auth=trust', '--encoding=UTF8', '--locale=C'], {
          ...owner,
          cwd: dir,
          stdio: ['ignore', log.fd, log.fd],
          hint: `see ${log.path}`,
        });
      }
      const args = ['-D', data, '-p', portOf(url, 5432), '-k', sockets, '-c', `listen_addresses=${hostOf(url)}`];
      return { cmd: join(bin, 'postgres'), args, options: { ...owner, cwd: dir } };
    },
  },
  {
    name: 'redis',
    label: 'Redis',
    envVar: 'REDIS_URL',
    aptPackage: 'redis-server',
    program: 'redis-server',
    stopSignal: 'SIGTERM',
    installed: () => Boolean(findExecutable('redis-server')),
    probe: (ctx, url) => probeRedis(url),
    async prepare(ctx, url, dir) {
      const args = ['--bind', hostOf(url), '--port', portOf(url, 6379), '--dir', dir, '--appendonly', 'yes', '--daemonize', 'no'];
      const password = decodeURIComponent(new URL(url).password);
      if (password) args.push('--requirepass', password);
      return { cmd: findExecutable('redis-server'), args, options: { cwd: dir } };
    },
  },
];

async function aptInstall(ctx, server) {
  if (process.getuid() !== 0 || !findExecutable('apt-get')) {
    throw new UserError(`${server.label} is not installed; install it (on Debian: apt-get install ${server.aptPackage}) or point ${server.envVar} at a running server.`);
  }
  if (!ctx.aptUpdated) {
    say('running apt-get update');
    await run('apt-get', ['update']);
    ctx.aptUpdated = true;
  }
  say(`installing ${server.aptPackage}`);
  await run('apt-get', ['install', '-y', server.aptPackage], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

async function startLocal(ctx, server, url) {
  const dir = join(ctx.keelDir, server.name);
  const logPath = join(ctx.keelDir, 'logs', `${server.name}.log`);
  mkdirSync(dir, { recursive: true });
  mkdirSync(join(ctx.keelDir, 'logs'), { recursive: true });
  const log = { fd: openSync(logPath, 'a'), path: relative(ctx.root, logPath) };
  try {
    const { cmd, args, options } = await server.prepare(ctx, url, dir, log);
    const child = spawnDetached(ctx.pids, server.name, cmd, args, { ...options, stdio: ['ignore', log.fd, log.fd] });
    ctx.started.push({ server, child });
    child.exited.then(({ code, signal }) => {
      if (!ctx.stopping) warn(`${server.label} stopped unexpectedly (${signal ?? `exit code ${code}`}); see ${log.path}, then restart npm start.`);
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      // Right after start the port may not listen yet, or JetStream may still be starting.
      const found = await server.probe(ctx, url);
      if (found.state === 'ok') return found;
      if (child.exitCode !== null || child.signalCode !== null || !child.pid) {
        throw new UserError(`${server.label} exited while starting; see ${log.path} for why.`);
      }
      if (Date.now() > deadline) {
        throw new UserError(`${server.label} did not answer at ${redact(url)} within ${START_TIMEOUT_MS / 1000} s; see ${log.path}.`);
      }
      await sleep(250);
    }
  } finally {
    closeSync(log.fd);
  }
}

/** Makes NATS, Postgres and Redis available at ctx.urls, starting local ones where needed. */
export async function ensureInfra(ctx) {
  for (const server of SERVERS) {
    const url = ctx.urls[server.name];
    // A server an earlier, hard-killed npm start left behind would answer the probe but be nobody's child.
    await ctx.pids.stopLeftover(server.name, server.program, server.stopSignal);
    let found = await server.probe(ctx, url);
    if (found.state === 'down' && !startable(url)) {
      throw new UserError(`Nothing answers at ${redact(url)}; start ${server.label} there or change ${server.envVar} (only loopback servers are started for you).`);
    }
    if (found.state === 'down' && !server.installed(ctx)) {
      await aptInstall(ctx, server);
      // Some packages start their own server on install; use it if it answers.
      found = await server.probe(ctx, url);
    }
    if (found.state === 'bad') throw new UserError(found.problem);
    if (found.state === 'ok') {
      say(`${server.label}: found at ${redact(url)} (${found.detail})`);
    } else {
      const started = await startLocal(ctx, server, url);
      say(`${server.label}: started at ${redact(url)} (${started.detail}), data in .keel/${server.name}`);
    }
  }
}

/** Stops the servers ensureInfra started, last started first. */
export async function stopInfra(ctx) {
  for (const { server, child } of [...ctx.started].reverse()) {
    say(`stopping ${server.label}`);
    await stopChild(child, server.stopSignal, STOP_GRACE_MS);
  }
}

/** `--check`: reports what answers at each URL; true when all three do. */
export async function checkInfra(ctx) {
  let allFound = true;
  for (const server of SERVERS) {
    const url = ctx.urls[server.name];
    const found = await server.probe(ctx, url);
    if (found.state === 'ok') {
      say(`${server.label}: found at ${redact(url)} (${found.detail})`);
      continue;
    }
    allFound = false;
    if (found.state === 'bad') say(`${server.label}: ${found.problem}`);
    else if (startable(url)) say(`${server.label}: nothing answers at ${redact(url)}; npm start would start one with its data in .keel/${server.name}.`);
    else say(`${server.label}: nothing answers at ${redact(url)}; start it there or change ${server.envVar}.`);
  }
  return allFound;
}
