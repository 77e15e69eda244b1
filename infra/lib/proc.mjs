import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { say, UserError } from './log.mjs';

/** Full path of an executable on PATH or in the sbin directories (Debian puts nats-server in /usr/sbin). */
export function findExecutable(name) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const file = join(dir, name);
    try {
      if (statSync(file).isFile() && statSync(file).mode & 0o111) return file;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/**
 * Runs a command to completion, its output shown unless `options.stdio` says otherwise. A failure
 * is a UserError naming the command and ending with `hint` (what to do next).
 */
export function run(cmd, args, { hint = 'fix the error it printed above and try again', ...options } = {}) {
  const shown = [cmd, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'inherit', ...options });
    child.once('error', (err) => reject(new UserError(`Could not run \`${shown}\` (${err.message}); check that it is installed.`)));
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new UserError(`\`${shown}\` failed (${signal ?? `exit code ${code}`}); ${hint}.`));
    });
  });
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

/** Sends `signal`, then SIGKILL if the process is still there after `graceMs`; resolves once it is gone. */
export async function stopPid(pid, signal, graceMs) {
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return;
      }
    }
    await sleep(100);
  }
}

/**
 * Pid files under .keel/run for every process npm start spawns. When npm start itself was
 * killed hard (SIGKILL, a closed terminal), its children live on; the next start finds them
 * here and stops them, so ports, data directories and Postgres's lock are free again.
 */
export class PidFiles {
  constructor(dir) {
    this.dir = dir;
  }

  record(name, pid) {
    mkdirSync(this.dir, { recursive: true });
    writeFileSync(join(this.dir, `${name}.pid`), `${pid}\n`);
  }

  forget(name) {
    rmSync(join(this.dir, `${name}.pid`), { force: true });
  }

  /** The recorded process, if it is still running and its command line mentions `program`. */
  running(name, program) {
    try {
      const pid = Number(readFileSync(join(this.dir, `${name}.pid`), 'utf8'));
      // A reused pid belongs to some other program: its command line tells them apart.
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return cmdline.includes(program) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async stopLeftover(name, program, signal) {
    const pid = this.running(name, program);
    if (pid) {
      say(`stopping ${name} (pid ${pid}), left running by an earlier npm start that did not shut down`);
      await stopPid(pid, signal, 30_000);
    }
    this.forget(name);
  }
}

/**
 * Spawns a long-running child in its own process group: a Ctrl-C in the terminal then reaches
 * only npm start, which stops the services before the infrastructure they depend on.
 */
export function spawnDetached(pids, name, cmd, args, options) {
  const child = spawn(cmd, args, { ...options, detached: true });
  child.exited = new Promise((resolve) => {
    // 'close' comes after the output pipes are drained, so a child's last lines print before any report of its end.
    child.once('close', (code, signal) => resolve({ code, signal }));
    // A failed spawn (ENOENT, EACCES) emits only 'error'.
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
  });
  if (child.pid) pids.record(name, child.pid);
  child.exited.then(() => pids.forget(name));
  return child;
}

/** Stops a child started by spawnDetached: `signal`, then SIGKILL after `graceMs`. */
export async function stopChild(child, signal, graceMs) {
  if (child.exitCode !== null || child.signalCode !== null || !child.pid) return;
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** True when something already listens on host:port (trying to listen there is the reliable test). */
export function portInUse(host, port) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (err) => resolve(err.code === 'EADDRINUSE'));
    server.listen(Number(port), host, () => server.close(() => resolve(false)));
  });
}
