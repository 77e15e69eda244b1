import { ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { manifestService, manifestServices, startOrder, stopOrder } from '@keel/service-kit';
import { TestEnv } from './environment';

/** A service of services.manifest.json (checked when it is used: an unknown name is an error naming the known ones). */
export type ServiceName = string;

/** Every service of the manifest, in start order (the backends, then the gateway). */
export function serviceNames(): ServiceName[] {
  return startOrder(manifestServices()).map((s) => s.name);
}

/** Settings only provisioning may see: the admin URL and the roles' secrets. */
const ADMIN_ONLY = /^(KEEL_TEST_DATABASE_URL|KEEL_DB_PASSWORD(_[A-Z0-9_]+)?)$/;

/**
 * The environment of a service process, as `npm start`, compose and infra/k8s give it: everything
 * but the admin URL, the roles' secrets and the secrets the manifest gives to other services; a
 * service with data gets its own role's URL (its secret inside) as DATABASE_URL, the gateway no
 * database URL at all. So a secret missing from a service's manifest line fails the tests too.
 */
export function serviceEnv(name: ServiceName, env: Record<string, string | undefined>): Record<string, string> {
  const { role, passwordEnv, secrets } = manifestService(name);
  const othersSecrets = new Set(manifestServices().flatMap((s) => s.secrets).filter((k) => !secrets.includes(k)));
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !ADMIN_ONLY.test(k) && k !== 'DATABASE_URL' && !othersSecrets.has(k)) out[k] = v;
  if (role && passwordEnv && env.DATABASE_URL) {
    const url = new URL(env.DATABASE_URL);
    url.username = role;
    url.password = env[passwordEnv] ?? env.KEEL_DB_PASSWORD ?? '';
    out.DATABASE_URL = url.toString();
  }
  return out;
}

const ROOT = join(__dirname, '..', '..', '..');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A GET over https trusting `ca` (a test's self-signed certificate), as much of a Response as waitForReady reads. */
function getTrusting(url: string, ca: Buffer): Promise<{ ok: boolean; status: number; text: () => Promise<string> }> {
  return new Promise((resolve, reject) => {
    httpsGet(url, { ca }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ ok: res.statusCode === 200, status: res.statusCode ?? 0, text: async () => body }));
    }).on('error', reject);
  });
}

/** Waits for `url` to answer 200; an https URL with `ca` trusts that certificate. */
export async function waitForReady(url: string, timeoutMs = 30_000, proc?: ChildProcess, ca?: Buffer): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (proc && proc.exitCode !== null) throw new Error(`process exited with ${proc.exitCode} before ${url} was ready`);
    try {
      const res = ca ? await getTrusting(url, ca) : await fetch(url);
      if (res.ok) return;
      last = `${res.status} ${await res.text()}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${last}`);
}

interface Running {
  proc: ChildProcess;
  port: number;
  output: string[];
}

/**
 * The real service processes (built JavaScript, as `npm start` runs them) on one isolated
 * namespace, with helpers to kill and restart them.
 */
export class Stack {
  private readonly running = new Map<ServiceName, Running>();
  private readonly ports = new Map<ServiceName, number>();
  private readonly provisioned = new Set<ServiceName>();

  constructor(readonly env: TestEnv, private readonly extraEnv: Record<string, string> = {}) {}

  get gatewayUrl(): string {
    const gateway = manifestServices().find((s) => s.kind === 'gateway');
    return `${this.tlsCertificate ? 'https' : 'http'}://127.0.0.1:${gateway && this.ports.get(gateway.name)}`;
  }

  /** The gateway's certificate file when the stack runs it with TLS (KEEL_TLS_CERT). */
  get tlsCertificate(): string | undefined {
    return this.extraEnv.KEEL_TLS_CERT ?? this.env.KEEL_TLS_CERT;
  }

  get token(): string {
    return this.env.KEEL_BOOTSTRAP_TOKEN!;
  }

  /** The first platform administrator the auth service creates at its first start. */
  get admin(): { email: string; password: string } {
    return { email: this.env.KEEL_ADMIN_EMAIL!, password: this.env.KEEL_ADMIN_PASSWORD! };
  }

  opsUrl(name: ServiceName): string {
    return `http://127.0.0.1:${this.ports.get(name)}`;
  }

  async start(...names: ServiceName[]): Promise<this> {
    for (const name of names) await this.startOne(name);
    return this;
  }

  /** Every service of the manifest, in its start order. */
  async startAll(): Promise<this> {
    return this.start(...serviceNames());
  }

  /**
   * The provisioning step, as `npm start` runs it: `main.js --provision-only` with the admin URL
   * and the roles' secrets, before the service first starts. Once per service and stack.
   */
  async provision(name: ServiceName): Promise<void> {
    const service = manifestService(name);
    if (!service.database || this.provisioned.has(name)) return;
    const proc = spawn(process.execPath, [join(ROOT, service.script), '--provision-only'], {
      env: { ...process.env, ...this.env, ...this.extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output: string[] = [];
    proc.stdout!.on('data', (c: Buffer) => output.push(c.toString()));
    proc.stderr!.on('data', (c: Buffer) => output.push(c.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    if (code !== 0) throw new Error(`provisioning ${name} failed (exit ${code}):\n${output.join('').slice(-4000)}`);
    this.provisioned.add(name);
  }

  async startOne(name: ServiceName): Promise<void> {
    const service = manifestService(name);
    await this.provision(name);
    const port = this.ports.get(name) ?? (await freePort());
    this.ports.set(name, port);
    const env = { ...serviceEnv(name, { ...process.env, ...this.env, ...this.extraEnv }), [service.portEnv]: String(port) };
    const proc = spawn(process.execPath, [join(ROOT, service.script)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const output: string[] = [];
    const keep = (chunk: Buffer) => {
      output.push(chunk.toString());
      if (output.length > 200) output.shift();
    };
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    this.running.set(name, { proc, port, output });
    try {
      const tls = service.kind === 'gateway' && this.tlsCertificate ? readFileSync(this.tlsCertificate) : undefined;
      await waitForReady(`${tls ? 'https' : 'http'}://127.0.0.1:${port}/ready`, 60_000, proc, tls);
    } catch (error) {
      throw new Error(`${name} did not start: ${(error as Error).message}\n${output.join('').slice(-4000)}`);
    }
  }

  /**
   * Sends a signal (SIGKILL by default) and waits for the process to be gone (SIGKILL after 10 s);
   * resolves with how it exited, or undefined when it was not running.
   */
  async kill(name: ServiceName, signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
    const r = this.running.get(name);
    if (!r) return undefined;
    this.running.delete(name);
    if (r.proc.exitCode !== null || r.proc.signalCode !== null) return { code: r.proc.exitCode, signal: r.proc.signalCode };
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => r.proc.once('exit', (code, sig) => resolve({ code, signal: sig })));
    r.proc.kill(signal);
    const timer = setTimeout(() => r.proc.kill('SIGKILL'), 10_000);
    const exit = await exited;
    clearTimeout(timer);
    return exit;
  }

  /** Sends a signal and returns at once (SIGSTOP freezes a process, SIGCONT lets it go on). */
  signal(name: ServiceName, signal: NodeJS.Signals): void {
    const r = this.running.get(name);
    if (!r) throw new Error(`${name} is not running`);
    r.proc.kill(signal);
  }

  logs(name: ServiceName): string {
    return this.running.get(name)?.output.join('') ?? '';
  }

  async stop(): Promise<void> {
    for (const { name } of stopOrder(manifestServices())) await this.kill(name, 'SIGTERM');
  }
}
