/**
 * A Keel process under `npm start`: its output passed through line by line, and restarted with
 * back-off when it exits on its own after it had once been ready. An exit before it was ever
 * ready is a start-up failure (bad configuration, a port in use) that restarting would not fix.
 */
import http from 'node:http';
import https from 'node:https';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { say, UserError } from './log.mjs';
import { spawnDetached, stopChild } from './proc.mjs';

const STOP_GRACE_MS = 10_000;
const MAX_BACKOFF_MS = 30_000;
/** A process that stayed up this long is healthy again: its next crash restarts it after 1 s. */
const STABLE_MS = 60_000;

/** JSON log lines go out untouched for log tools; anything else (stack traces, warnings) gets the name. */
function forward(stream, out, name) {
  createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
    out.write(line.startsWith('{') || !line ? `${line}\n` : `[${name}] ${line}\n`);
  });
}

const describeExit = ({ code, signal, error }) => error?.message ?? signal ?? `exit code ${code}`;

/**
 * The status `url` answers within 2 s. Over https the certificate is not checked: this asks a
 * process `npm start` itself started, on its own address, whether it serves yet (its certificate
 * may name the public host, or be the operator's own).
 */
function statusOf(url) {
  return new Promise((resolve, reject) => {
    const secure = url.startsWith('https:');
    const req = (secure ? https : http).get(url, { timeout: 2_000, ...(secure ? { rejectUnauthorized: false } : {}) }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

export class Service {
  /** `kind` is the manifest's (backend or gateway); `script` is relative to `root`; `readyUrl` answers 200 once the process serves. */
  constructor({ name, kind, root, script, env, readyUrl, pids }) {
    Object.assign(this, { name, kind, root, script, env, readyUrl, pids });
    this.failures = 0;
    this.ready = false;
    this.stopping = false;
  }

  start() {
    const child = spawnDetached(this.pids, this.name, process.execPath, [join(this.root, this.script)], {
      cwd: this.root,
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    forward(child.stdout, process.stdout, this.name);
    forward(child.stderr, process.stderr, this.name);
    const startedAt = Date.now();
    child.exited.then((exit) => {
      if (this.stopping || !this.ready) return;
      this.failures = Date.now() - startedAt > STABLE_MS ? 1 : this.failures + 1;
      const delay = Math.min(1000 * 2 ** (this.failures - 1), MAX_BACKOFF_MS);
      say(`${this.name} exited unexpectedly (${describeExit(exit)}); restarting it in ${delay / 1000} s`);
      this.restartTimer = setTimeout(() => this.start(), delay);
    });
    this.child = child;
  }

  /** Resolves when readyUrl answers 200; fails if the process exits first or takes longer than `timeoutMs`. */
  async waitReady(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { child } = this;
      if (child.exitCode !== null || child.signalCode !== null || !child.pid) {
        throw new UserError(`${this.name} exited (${describeExit(await child.exited)}) before it was ready; see its log above for why.`);
      }
      try {
        const status = await statusOf(this.readyUrl);
        if (status >= 200 && status < 300) {
          this.ready = true;
          return;
        }
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        throw new UserError(`${this.name} did not become ready within ${timeoutMs / 1000} s (${this.readyUrl}); see its log above.`);
      }
      await sleep(500);
    }
  }

  async stop() {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    if (this.child) await stopChild(this.child, 'SIGTERM', STOP_GRACE_MS);
  }
}
