import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Ajv from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigError, parseConfig } from '@keel/config';
import { loadManifest, ServiceEntry } from '@keel/service-kit';
import { serviceEnv, serviceNames } from '@keel/testing';

/**
 * The deployment files: services.manifest.json and what is generated from it, docker-compose.yml
 * against the Compose Specification schema, the Kubernetes manifests, the NATS cluster example,
 * and `npm start --check` against the servers running on this machine.
 */

const ROOT = join(__dirname, '..');
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const MANIFEST = loadManifest();
const KEEL_SERVICES = MANIFEST.map((s) => s.name);
/** The services with data, and their database roles. */
const DATA_SERVICES: Record<string, string> = Object.fromEntries(MANIFEST.filter((s) => s.database).map((s) => [s.name, s.role!]));
const GATEWAY = MANIFEST.find((s) => s.kind === 'gateway')!;
const BACKENDS = MANIFEST.filter((s) => s.kind === 'backend');

/** What `node infra/generate.mjs` would write (for another manifest when `manifest` is given), by path. */
function generated(manifest?: string): Record<string, string> {
  const result = spawnSync(process.execPath, [join(ROOT, 'infra/generate.mjs'), '--stdout', ...(manifest ? ['--manifest', manifest] : [])], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (result.status !== 0) throw new Error(`infra/generate.mjs failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** Runs the generator on a manifest of `services` in a temporary file. */
function generateFor(services: unknown[]): { status: number | null; stderr: string; files?: Record<string, string> } {
  const dir = mkdtempSync(join(tmpdir(), 'keel-manifest-'));
  try {
    const file = join(dir, 'services.manifest.json');
    writeFileSync(file, JSON.stringify({ services }));
    const result = spawnSync(process.execPath, [join(ROOT, 'infra/generate.mjs'), '--stdout', '--manifest', file], { cwd: ROOT, encoding: 'utf8' });
    return { status: result.status, stderr: result.stderr, files: result.status === 0 ? JSON.parse(result.stdout) : undefined };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const manifestLine = (s: ServiceEntry) => ({ name: s.name, kind: s.kind, port: s.port, database: s.database, replicas: s.replicas, secrets: s.secrets });

describe('services.manifest.json', () => {
  it('is read the same by the scripts (infra/lib/manifest.mjs) and the libraries (@keel/service-kit)', () => {
    const result = spawnSync(
      process.execPath,
      ['--input-type=module', '-e', "import { loadManifest } from './infra/lib/manifest.mjs'; console.log(JSON.stringify(loadManifest(process.cwd())));"],
      { cwd: ROOT, encoding: 'utf8' },
    );
    expect({ status: result.status, stderr: result.stderr }).toEqual({ status: 0, stderr: '' });
    expect(JSON.parse(result.stdout)).toEqual(JSON.parse(JSON.stringify(MANIFEST)));
  });

  it('is where every generated file comes from: each is what infra/generate.mjs gives, byte for byte', () => {
    const files = generated();
    expect(Object.keys(files).sort()).toEqual(
      ['docker-compose.yml', 'infra/k8s/kustomization.yaml', 'infra/k8s/provision.yaml', 'infra/k8s/secret.yaml', 'tsconfig.build.json', 'libs/contracts/src/services.generated.ts', ...KEEL_SERVICES.map((n) => `infra/k8s/${n}.yaml`)].sort(),
    );
    for (const [path, content] of Object.entries(files)) {
      // The path goes with the content, so a failure names the stale file.
      expect({ path, content: existsSync(join(ROOT, path)) ? read(path) : undefined }).toEqual({ path, content });
    }
  });

  it('lists a service whose source entry point exists, for every service the test stack runs', () => {
    expect(serviceNames().sort()).toEqual([...KEEL_SERVICES].sort());
    for (const s of MANIFEST) expect(existsSync(join(ROOT, sourceOf(s.script)))).toBe(true);
    expect(MANIFEST.filter((s) => s.kind === 'gateway')).toHaveLength(1);
  });

  it('gives a service added with one line its compose service, Deployment, Secret, provisioning step, build and start', () => {
    const scaling = { name: 'scaling', kind: 'backend', port: 9105, database: true };
    const { status, stderr, files } = generateFor([...MANIFEST.map(manifestLine), scaling]);
    expect({ status, stderr }).toEqual({ status: 0, stderr: '' });
    const composed = parse(files!['docker-compose.yml'], { merge: true }) as { services: Record<string, ComposeService> };
    const svc = composed.services.scaling!;
    expect(svc.command).toEqual(['node', 'services/scaling/dist/main.js']);
    expect(composeDbUser(environment(svc).DATABASE_URL!).user).toBe('keel_scaling');
    expect(environment(svc).KEEL_OPS_PORT).toBe('9105');
    expect((svc.depends_on as Record<string, { condition: string }>).provision).toEqual({ condition: 'service_completed_successfully' });
    expect(oneLine(composed.services.provision!.command)).toContain('node services/scaling/dist/main.js --provision-only');
    expect(environment(composed.services.provision!).KEEL_DB_PASSWORD_SCALING).toMatch(/^\$\{KEEL_DB_PASSWORD_SCALING:\?/);
    expect((composed.services.gateway!.depends_on as Record<string, { condition: string }>).scaling).toEqual({ condition: 'service_healthy' });
    const deployment = parse(files!['infra/k8s/scaling.yaml']);
    expect(deployment).toMatchObject({ kind: 'Deployment', metadata: { name: 'keel-scaling' }, spec: { replicas: 2 } });
    expect((parse(files!['infra/k8s/kustomization.yaml']) as { resources: string[] }).resources).toContain('scaling.yaml');
    expect(parseAllDocuments(files!['infra/k8s/secret.yaml']).map((d) => d.toJS().metadata.name)).toContain('keel-scaling-db');
    expect(oneLine(parse(files!['infra/k8s/provision.yaml']).spec.template.spec.containers[0].command)).toContain('services/scaling/dist/main.js');
    expect(JSON.parse(files!['tsconfig.build.json']).references).toContainEqual({ path: 'services/scaling' });
    // Its contract (libs/contracts/src/scaling.ts) is listed, so its routes, subjects and event
    // schemas join `routes`, `rpcs`, the documents and the gateway's forwarded routes by themselves.
    expect(files!['libs/contracts/src/services.generated.ts']).toContain("import { scalingContract } from './scaling';");
    expect(files!['libs/contracts/src/services.generated.ts']).toMatch(/serviceContracts = \{[^}]*\bscaling: scalingContract,/);
  });

  it.each([
    ['two services on one port', [{ name: 'a1', kind: 'backend', port: 9101 }, { name: 'b1', kind: 'backend', port: 9101 }], /port 9101/],
    ['a field it does not know', [{ name: 'a1', kind: 'backend', port: 9101, replica: 3 }], /unknown fields \(replica\)/],
    ['a gateway with a database', [{ name: 'gw', kind: 'gateway', port: 8080, database: true }], /no database/],
  ])('is refused by the generator with %s', (_, services, message) => {
    const { status, stderr } = generateFor(services);
    expect(status).toBe(1);
    expect(stderr).toMatch(message);
  });

  it('gives the test stack each role from the manifest', () => {
    for (const s of MANIFEST) {
      const env = serviceEnv(s.name, { DATABASE_URL: 'postgres://postgres:root@db:5432/keel', ...(s.passwordEnv ? { [s.passwordEnv]: 'own' } : {}) });
      expect(env.DATABASE_URL && new URL(env.DATABASE_URL).username).toBe(s.role);
    }
    expect(() => serviceEnv('nosuch', {})).toThrow(/not a service of services.manifest.json/);
  });
});

describe('Dockerfile', () => {
  it('keeps no list of services or ports that could drift from the manifest', () => {
    const dockerfile = read('Dockerfile');
    expect(dockerfile).not.toMatch(/^EXPOSE/m);
    for (const s of MANIFEST) expect(dockerfile).not.toContain(String(s.port));
  });
});
/** The provisioning command: each data service's entry point with --provision-only, in order. */
const PROVISION_COMMAND = Object.keys(DATA_SERVICES)
  .map((name) => `node services/${name}/dist/main.js --provision-only`)
  .join(' && ');
/** User and password of a compose DATABASE_URL, whose password is a ${…} interpolation (not a URL until compose fills it). */
const composeDbUser = (url: string) => {
  const m = /^postgres:\/\/([^:@/]+):(.+)@postgres:5432\/keel$/.exec(url);
  if (!m) throw new Error(`not a database URL of this compose file: ${url}`);
  return { user: m[1]!, password: m[2]! };
};
const oneLine = (command: string | string[] | undefined) => (Array.isArray(command) ? command.join(' ') : (command ?? '')).replace(/\s+/g, ' ').trim();

type Port = string | number | { target: string | number };
interface ComposeService {
  build?: string | { context?: string; dockerfile?: string };
  command?: string | string[];
  environment?: Record<string, string> | string[];
  ports?: Port[];
  volumes?: (string | { target: string })[];
  depends_on?: string[] | Record<string, { condition: string }>;
  healthcheck?: unknown;
}

// Compose files share settings through YAML merge keys (`<<: *anchor`), which the yaml
// package resolves only when asked to.
const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, ComposeService> };
const services = compose.services;

const environment = (s: ComposeService): Record<string, string> =>
  Array.isArray(s.environment)
    ? Object.fromEntries(s.environment.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]))
    : (s.environment ?? {});

/** The container side of a port mapping: "4318", "4318:4318", "127.0.0.1:4318:4318/tcp" or { target }. */
const containerPort = (p: Port) => Number(typeof p === 'object' ? p.target : String(p).split('/')[0].split(':').pop());

/** The source file a built entry point comes from: services/x/dist/main.js ← services/x/src/main.ts. */
const sourceOf = (script: string) => script.replace('/dist/', '/src/').replace(/\.js$/, '.ts');

describe('docker-compose.yml', () => {
  it('is valid under the Compose Specification schema', () => {
    // The schema names draft-07 by an https URL that ajv does not map; draft-07 is ajv's default.
    const { $schema, ...schema } = JSON.parse(read('infra/compose-spec.schema.json'));
    expect($schema).toContain('draft-07');
    const ajv = new Ajv({ allErrors: true, strict: false });
    const validate = ajv.compile(schema);
    validate(compose);
    expect(ajv.errorsText(validate.errors, { dataVar: 'compose' })).toBe('No errors');
  });

  it('builds every image it builds from the repository Dockerfile', () => {
    const built = Object.entries(services).filter(([, s]) => s.build);
    expect(built.map(([name]) => name).sort()).toEqual([...KEEL_SERVICES, 'provision'].sort());
    for (const [, { build }] of built) {
      const { context = '.', dockerfile = 'Dockerfile' } = typeof build === 'string' ? { context: build } : build!;
      expect(resolve(ROOT, context)).toBe(resolve(ROOT));
      expect(dockerfile).toBe('Dockerfile');
    }
    expect(existsSync(join(ROOT, 'Dockerfile'))).toBe(true);
  });

  it.each(KEEL_SERVICES)('runs %s from its built entry point', (name) => {
    const { command } = services[name];
    expect(command).toEqual(['node', `services/${name}/dist/main.js`]);
    expect(existsSync(join(ROOT, sourceOf((command as string[])[1])))).toBe(true);
    expect(environment(services[name]).OTEL_EXPORTER_OTLP_ENDPOINT).toBe('http://jaeger:4318');
  });

  it('has the audit service require the key-encryption key that seals its signing key', () => {
    expect(environment(services.audit).KEEL_KEK).toMatch(/^\$\{KEEL_KEK:\?.+\}$/);
  });

  it('has the gateway require an operator token and listen beyond loopback', () => {
    const env = environment(services[GATEWAY.name]);
    expect(env.KEEL_BOOTSTRAP_TOKEN).toMatch(/^\$\{KEEL_BOOTSTRAP_TOKEN:\?.+\}$/);
    expect(env.KEEL_HTTP_HOST).toBe('0.0.0.0');
    expect(services[GATEWAY.name].ports?.map(containerPort)).toContain(GATEWAY.port);
  });

  it('waits only for services it has, and for health only where there is a health check', () => {
    for (const service of Object.values(services)) {
      const deps = service.depends_on ?? [];
      const conditions = Array.isArray(deps) ? deps.map((d) => [d, 'service_started']) : Object.entries(deps).map(([d, c]) => [d, c.condition]);
      for (const [dep, condition] of conditions) {
        expect(Object.keys(services)).toContain(dep);
        if (condition === 'service_healthy') expect(services[dep].healthcheck).toBeDefined();
      }
    }
  });

  it('provisions first, alone with the superuser URL, every data service in turn', () => {
    const provision = services.provision!;
    expect(oneLine(provision.command)).toBe(`sh -c ${PROVISION_COMMAND}`);
    const env = environment(provision);
    expect(composeDbUser(env.DATABASE_URL!).user).toBe('postgres');
    for (const name of Object.keys(DATA_SERVICES)) expect(env[`KEEL_DB_PASSWORD_${name.toUpperCase()}`]).toMatch(/^\$\{KEEL_DB_PASSWORD_[A-Z]+:\?.+\}$/);
  });

  it.each(Object.keys(DATA_SERVICES))("gives %s only its own role's URL, with its own secret, once provisioning has completed", (name) => {
    const env = environment(services[name]!);
    const url = composeDbUser(env.DATABASE_URL!);
    expect(url.user).toBe(DATA_SERVICES[name]);
    expect(url.password).toMatch(new RegExp(`^\\$\\{KEEL_DB_PASSWORD_${name.toUpperCase()}:\\?`));
    expect(Object.keys(env).filter((k) => k.startsWith('KEEL_DB_PASSWORD'))).toEqual([]);
    expect((services[name]!.depends_on as Record<string, { condition: string }>).provision).toEqual({ condition: 'service_completed_successfully' });
  });

  it('gives no service but provision the superuser URL, and the gateway no database at all', () => {
    for (const [name, service] of Object.entries(services)) {
      if (name === 'provision' || name === 'postgres') continue;
      const url = environment(service).DATABASE_URL;
      if (url) expect({ name, user: composeDbUser(url).user }).toEqual({ name, user: DATA_SERVICES[name] });
    }
    expect(environment(services[GATEWAY.name]!).DATABASE_URL).toBeUndefined();
  });

  it('starts the gateway once every backend is healthy, and checks each on its own port', () => {
    const deps = services[GATEWAY.name]!.depends_on as Record<string, { condition: string }>;
    for (const b of BACKENDS) {
      expect({ backend: b.name, dep: deps[b.name] }).toEqual({ backend: b.name, dep: { condition: 'service_healthy' } });
      expect(JSON.stringify(services[b.name]!.healthcheck)).toContain(`http://127.0.0.1:${b.port}/ready`);
      expect(environment(services[b.name]!).KEEL_OPS_PORT).toBe(String(b.port));
    }
  });

  it('has jaeger accept OTLP over HTTP on 4318', () => {
    expect(services.jaeger.ports?.map(containerPort)).toContain(4318);
    expect(String(environment(services.jaeger).COLLECTOR_OTLP_ENABLED)).toBe('true');
  });

  it('runs nats with JetStream on a volume', () => {
    const command = services.nats.command as string[];
    expect(command.includes('-js') || command.includes('--jetstream')).toBe(true);
    const storeDir = command[command.indexOf('-sd') + 1];
    expect(services.nats.volumes?.some((v) => (typeof v === 'string' ? v.split(':')[1] : v.target) === storeDir)).toBe(true);
  });
});

describe('infra/k8s', () => {
  const kustomization = parse(read('infra/k8s/kustomization.yaml')) as { resources: string[] };
  const objects = kustomization.resources.flatMap((file) =>
    parseAllDocuments(read(join('infra/k8s', file))).map((doc) => doc.toJS()),
  );
  const deployments = objects.filter((o) => o.kind === 'Deployment');

  it('deploys every service of the manifest with its replicas', () => {
    expect(deployments.map((d) => d.metadata.name).sort()).toEqual(KEEL_SERVICES.map((s) => `keel-${s}`).sort());
    for (const s of MANIFEST) {
      const d = deployments.find((x) => x.metadata.name === `keel-${s.name}`);
      expect(d.spec.replicas).toBe(s.replicas);
      expect(d.spec.template.metadata.labels).toMatchObject(d.spec.selector.matchLabels);
    }
  });

  it.each(MANIFEST.map((s) => [s.name, s] as const))("gives %s its port and the secrets of its manifest line, nothing else from keel-secrets", (name, s) => {
    const [container] = deployments.find((d) => d.metadata.name === `keel-${name}`).spec.template.spec.containers;
    expect(container.ports.map((p: { containerPort: number }) => p.containerPort)).toEqual([s.port]);
    const env = container.env as { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
    expect(env.find((e) => e.name === s.portEnv)?.value).toBe(String(s.port));
    expect(env.filter((e) => e.valueFrom?.secretKeyRef?.name === 'keel-secrets').map((e) => e.name)).toEqual(s.secrets);
  });

  it.each(KEEL_SERVICES)('probes %s on /ready and /health of a port it declares', (name) => {
    const [container] = deployments.find((d) => d.metadata.name === `keel-${name}`).spec.template.spec.containers;
    expect(existsSync(join(ROOT, sourceOf(container.command[1])))).toBe(true);
    const ports = container.ports.map((p: { name: string }) => p.name);
    expect(container.readinessProbe.httpGet.path).toBe('/ready');
    expect(container.livenessProbe.httpGet.path).toBe('/health');
    expect(ports).toContain(container.readinessProbe.httpGet.port);
    expect(ports).toContain(container.livenessProbe.httpGet.port);
  });

  it('provisions with a Job, the only one to read the superuser secret', () => {
    const jobs = objects.filter((o) => o.kind === 'Job');
    expect(jobs.map((j) => j.metadata.name)).toEqual(['keel-provision']);
    const [container] = jobs[0].spec.template.spec.containers;
    expect(oneLine(container.command)).toBe(`sh -c ${PROVISION_COMMAND}`);
    expect(container.envFrom).toContainEqual({ secretRef: { name: 'keel-provision-db' } });
    const admin = objects.find((o) => o.kind === 'Secret' && o.metadata.name === 'keel-provision-db');
    expect(new URL(admin.stringData.DATABASE_URL).username).toBe('postgres');
    for (const d of deployments) expect(JSON.stringify(d)).not.toContain('keel-provision-db');
  });

  it.each(Object.keys(DATA_SERVICES))("gives %s its own role's URL from a Secret of its own", (name) => {
    const [container] = deployments.find((d) => d.metadata.name === `keel-${name}`).spec.template.spec.containers;
    const refs = (container.env as { name: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[]).filter((e) => e.name === 'DATABASE_URL');
    expect(refs.map((e) => e.valueFrom?.secretKeyRef)).toEqual([{ name: `keel-${name}-db`, key: 'DATABASE_URL' }]);
    expect(container.env.map((e: { name: string }) => e.name).filter((n: string) => n.startsWith('KEEL_DB_PASSWORD'))).toEqual([]);
    const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === `keel-${name}-db`);
    expect(new URL(secret.stringData.DATABASE_URL).username).toBe(DATA_SERVICES[name]);
  });

  it("keel-secrets' placeholders do not start a service (production, the default): each is refused by name", () => {
    const config = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'keel-config').data as Record<string, string>;
    const secrets = objects.find((o) => o.kind === 'Secret' && o.metadata.name === 'keel-secrets').stringData as Record<string, string>;
    expect(config.KEEL_ENV).toBe('production');
    const issues = (env: Record<string, string>): string[] => {
      try {
        parseConfig(env);
        return [];
      } catch (error) {
        if (error instanceof ConfigError) return error.issues;
        throw error;
      }
    };
    for (const key of ['KEEL_BOOTSTRAP_TOKEN', 'KEEL_ADMIN_PASSWORD', 'KEEL_KEK']) {
      const refused = issues({ ...config, [key]: secrets[key]! });
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatch(new RegExp(`^${key}: `));
      expect(refused[0]).not.toContain(secrets[key]);
    }
    // What the comments there say to run instead is accepted.
    expect(issues({ ...config, KEEL_BOOTSTRAP_TOKEN: randomBytes(24).toString('base64'), KEEL_ADMIN_PASSWORD: randomBytes(18).toString('base64'), KEEL_KEK: randomBytes(32).toString('base64') })).toEqual([]);
  });

  it('exposes the gateway through a Service', () => {
    const service = objects.find((o) => o.kind === 'Service' && o.metadata.name === `keel-${GATEWAY.name}`);
    const gateway = deployments.find((d) => d.metadata.name === `keel-${GATEWAY.name}`);
    expect(gateway.spec.template.metadata.labels).toMatchObject(service.spec.selector);
    expect(gateway.spec.template.spec.containers[0].ports.map((p: { name: string }) => p.name)).toContain(service.spec.ports[0].targetPort);
  });
});

describe('infra/nats/nats-cluster.conf', () => {
  it('is accepted by nats-server', () => {
    const result = spawnSync('nats-server', ['-t', '-c', join(ROOT, 'infra/nats/nats-cluster.conf')], {
      encoding: 'utf8',
      env: { ...process.env, SERVER_NAME: 'nats-0' },
    });
    expect({ status: result.status, output: result.stdout + result.stderr }).toMatchObject({ status: 0 });
  });
});

describe('infra/start.mjs --check', () => {
  it('finds NATS with JetStream, Postgres and Redis on this machine', () => {
    const result = spawnSync(process.execPath, [join(ROOT, 'infra/start.mjs'), '--check'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect({ status: result.status, output: result.stdout + result.stderr }).toMatchObject({ status: 0 });
    expect(result.stdout).toMatch(/^\[keel\] NATS: found at .* with JetStream\)$/m);
    expect(result.stdout).toMatch(/^\[keel\] Postgres: found at /m);
    expect(result.stdout).toMatch(/^\[keel\] Redis: found at /m);
  });
});
