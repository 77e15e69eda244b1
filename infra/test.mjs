// `npm test`: installs dependencies when needed, builds (tsc: the type check), makes NATS (with
// JetStream), Postgres and Redis available at NATS_URL / DATABASE_URL / REDIS_URL — using what
// answers there, or starting local servers with data under .keel/ as `npm start` does — then
// runs every jest project (unit, integration, e2e) and stops what it started. Each test file
// works in its own stream, subject prefix, database and Redis prefix, so a running Keel is
// never disturbed. Exits non-zero on any failure.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { installAndBuild } from './lib/build.mjs';
import { ensureInfra, stopInfra } from './lib/infra.mjs';
import { say, UserError } from './lib/log.mjs';
import { PidFiles } from './lib/proc.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const keelDir = join(root, '.keel');
const env = process.env;
const ctx = {
  root,
  keelDir,
  // Its own pid files: servers a running `npm start` owns are never taken for leftovers.
  pids: new PidFiles(join(keelDir, 'test-run')),
  started: [],
  stopping: false,
  urls: {
    nats: env.NATS_URL || 'nats://127.0.0.1:4222',
    postgres: env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/keel',
    redis: env.REDIS_URL || 'redis://127.0.0.1:6379',
  },
};

async function main() {
  await installAndBuild(root);
  await ensureInfra(ctx);
  const adminDb = new URL(ctx.urls.postgres);
  adminDb.pathname = '/postgres';
  const jest = spawn(process.execPath, [join(root, 'node_modules', 'jest', 'bin', 'jest.js'), '--maxWorkers=2', ...process.argv.slice(2)], {
    cwd: root,
    stdio: 'inherit',
    env: { ...env, NATS_URL: ctx.urls.nats, REDIS_URL: ctx.urls.redis, KEEL_TEST_DATABASE_URL: adminDb.toString() },
  });
  const code = await new Promise((resolve) => jest.once('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
  return code;
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (err) {
  console.error(err instanceof UserError ? `[keel] error: ${err.message}` : err);
} finally {
  ctx.stopping = true;
  if (ctx.started.length) say('stopping the servers the tests started');
  await stopInfra(ctx);
}
process.exit(exitCode);
