import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findExecutable, run } from './proc.mjs';
import { say } from './log.mjs';

/** pnpm from PATH, else the version package.json pins, fetched by npx. */
function pnpmCommand(root) {
  if (findExecutable('pnpm')) return ['pnpm'];
  const { packageManager } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  return ['npx', '-y', packageManager ?? 'pnpm'];
}

const lockHash = (root) => createHash('sha256').update(readFileSync(join(root, 'pnpm-lock.yaml'))).digest('hex');

/**
 * Installs dependencies when node_modules is missing or pnpm-lock.yaml changed since the last
 * install (its hash is kept inside node_modules, so deleting node_modules forgets it), then
 * builds. The build is incremental (tsc -b), so running it every time is cheap.
 */
export async function installAndBuild(root) {
  const [pnpm, ...pnpmArgs] = pnpmCommand(root);
  const stamp = join(root, 'node_modules', '.keel-lock.sha256');
  const installed = existsSync(stamp) ? readFileSync(stamp, 'utf8').trim() : undefined;
  if (!existsSync(join(root, 'node_modules')) || installed !== lockHash(root)) {
    say('installing dependencies (pnpm-lock.yaml is new or changed)');
    // confirmModulesPurge=false: pnpm would otherwise stop to ask before rebuilding node_modules.
    await run(pnpm, [...pnpmArgs, 'install', '--frozen-lockfile', '--config.confirmModulesPurge=false'], { cwd: root });
    writeFileSync(stamp, `${lockHash(root)}\n`);
  }
  say('building');
  await run(pnpm, [...pnpmArgs, 'run', 'build'], { cwd: root });
}
