import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { get, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupEnv, eventually, freePort, isolatedEnv } from '@keel/testing';

const ROOT = join(__dirname, '..');

/** An https request trusting `ca` only: status and body. */
function https(url: string, ca: Buffer, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = (options.method && options.method !== 'GET' ? request : get)(url, { method: options.method ?? 'GET', headers: options.headers, ca, timeout: 5_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    if (options.body) req.write(options.body);
    req.end();
  });
}

/**
 * The README's first command, as a user runs it: `npm start` (here `infra/start.mjs --no-build`:
 * the suite has built already) brings every service up, here with TLS on the gateway as the
 * README's Edge section shows, prints the banner, serves the API, and stops everything on Ctrl-C.
 * Its own namespace (database, stream, prefixes, ports), so it disturbs no other test.
 */
describe('npm start', () => {
  const env = isolatedEnv('npmstart');
  const dir = mkdtempSync(join(tmpdir(), 'keel-tls-'));
  const keelDirExisted = existsSync(join(ROOT, '.keel'));
  let proc: ChildProcess | undefined;
  const output: string[] = [];

  afterAll(async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGINT');
      await exited;
    }
    await cleanupEnv(env);
    rmSync(dir, { recursive: true, force: true });
    // What it made for this run only (pid files), unless a Keel of this checkout had it before.
    if (!keelDirExisted) rmSync(join(ROOT, '.keel'), { recursive: true, force: true });
  });

  it('brings Keel up with TLS on the gateway, serves the API over https only, and stops everything on SIGINT', async () => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'tls.key'), '-out', join(dir, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
    const ca = readFileSync(join(dir, 'tls.crt'));
    const ports = { KEEL_HTTP_PORT: await freePort(), KEEL_AUDIT_OPS_PORT: await freePort(), KEEL_AUTH_OPS_PORT: await freePort(), KEEL_TENANT_OPS_PORT: await freePort() };
    proc = spawn(process.execPath, [join(ROOT, 'infra/start.mjs'), '--no-build'], {
      cwd: ROOT,
      env: { ...process.env, ...env, ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])), KEEL_TLS_CERT: join(dir, 'tls.crt'), KEEL_TLS_KEY: join(dir, 'tls.key') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    proc.stdout!.on('data', (c: Buffer) => output.push(c.toString()));
    proc.stderr!.on('data', (c: Buffer) => output.push(c.toString()));
    const gateway = `https://127.0.0.1:${ports.KEEL_HTTP_PORT}`;
    await eventually(
      async () => {
        if (proc!.exitCode !== null) throw new Error(`npm start exited (${proc!.exitCode}):\n${output.join('').slice(-3000)}`);
        return output.join('');
      },
      (text) => text.includes('Keel is running.'),
      { timeoutMs: 120_000, intervalMs: 200, what: 'the banner of npm start' },
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n${output.join('').slice(-3000)}`);
    });
    const banner = output.join('');
    expect(banner).toContain(`Gateway:         ${gateway}`);
    expect(banner).toContain(`Bearer ${env.KEEL_BOOTSTRAP_TOKEN}`);

    expect(await https(`${gateway}/health`, ca)).toMatchObject({ status: 200 });
    const created = await https(`${gateway}/api/v1/tenants`, ca, {
      method: 'POST',
      headers: { authorization: `Bearer ${env.KEEL_BOOTSTRAP_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ slug: 'started-co', name: 'Started', plan: 'starter' }),
    });
    expect(created.status).toBe(201);
    // The gateway speaks TLS only on its port.
    await expect(fetch(`http://127.0.0.1:${ports.KEEL_HTTP_PORT}/health`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.status)).rejects.toThrow();

    const exited = new Promise<number | null>((r) => proc!.once('exit', (code) => r(code)));
    proc.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(output.join('')).toContain('[keel] stopped');
    // Every service it started is gone: nothing answers on their ports.
    for (const port of Object.values(ports)) {
      await expect(fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2_000) })).rejects.toThrow();
    }
  });
});
