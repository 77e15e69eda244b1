import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

/**
 * services.manifest.json at the repository root: every Keel process, one line each. The same
 * reading for the scripts is infra/lib/manifest.mjs; test/infra.spec.ts checks both agree.
 */
export const MANIFEST_PATH = join(__dirname, '..', '..', '..', 'services.manifest.json');

const entrySchema = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9-]{1,30}$/, 'lowercase letters, digits and dashes'),
  kind: z.enum(['backend', 'gateway']),
  port: z.number().int().min(1).max(65535),
  database: z.boolean().default(false),
  replicas: z.number().int().min(1).default(2),
  secrets: z.array(z.string().regex(/^KEEL_[A-Z0-9_]+$/, 'a KEEL_* variable name')).default([]),
});

const manifestSchema = z.object({
  services: z
    .array(entrySchema)
    .min(1)
    .refine((s) => new Set(s.map((e) => e.name)).size === s.length, 'two services have the same name')
    .refine((s) => new Set(s.map((e) => e.port)).size === s.length, 'two services have the same port')
    .refine((s) => s.every((e) => !(e.database && e.kind === 'gateway')), 'a gateway holds nothing durable, so it has no database'),
});

export type ServiceKind = z.infer<typeof entrySchema>['kind'];

export interface ServiceEntry extends z.infer<typeof entrySchema> {
  /** Its database role, when it has data (libs/config maps KEEL_DB_PASSWORD_<NAME> to keel_<name>). */
  role?: string;
  /** The variable holding that role's secret, for provisioning. */
  passwordEnv?: string;
  /** The variable the process reads its port from: KEEL_HTTP_PORT (gateway) or KEEL_OPS_PORT. */
  portEnv: 'KEEL_HTTP_PORT' | 'KEEL_OPS_PORT';
  /** The variable `npm start` reads that port from (KEEL_<NAME>_OPS_PORT for a backend). */
  startPortEnv: string;
  /** The built entry point, from the repository root. */
  script: string;
}

export class ManifestError extends Error {}

function derive(e: z.infer<typeof entrySchema>): ServiceEntry {
  const token = e.name.replace(/-/g, '_');
  return {
    ...e,
    ...(e.database ? { role: `keel_${token}`, passwordEnv: `KEEL_DB_PASSWORD_${token.toUpperCase()}` } : {}),
    portEnv: e.kind === 'gateway' ? 'KEEL_HTTP_PORT' : 'KEEL_OPS_PORT',
    startPortEnv: e.kind === 'gateway' ? 'KEEL_HTTP_PORT' : `KEEL_${token.toUpperCase()}_OPS_PORT`,
    script: `services/${e.name}/dist/main.js`,
  };
}

/** Every service of the manifest at `file`, checked, with what follows from each. */
export function loadManifest(file = MANIFEST_PATH): ServiceEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new ManifestError(`${file} is not readable JSON (${(error as Error).message}); fix it.`);
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ManifestError(`${file} is not a valid services manifest: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data.services.map(derive);
}

let cached: ServiceEntry[] | undefined;

/** The repository's services, read once. */
export function manifestServices(): ServiceEntry[] {
  cached ??= loadManifest();
  return cached;
}

/** One service of the repository's manifest; an unknown name is an error that lists the known ones. */
export function manifestService(name: string): ServiceEntry {
  const entry = manifestServices().find((s) => s.name === name);
  if (!entry) throw new ManifestError(`${name} is not a service of services.manifest.json (${manifestServices().map((s) => s.name).join(', ')})`);
  return entry;
}

/** The backends in manifest order, then the gateways (which call them). */
export const startOrder = (services: ServiceEntry[]): ServiceEntry[] => [
  ...services.filter((s) => s.kind === 'backend'),
  ...services.filter((s) => s.kind === 'gateway'),
];

/** The other way round: the gateways first, then the backends, last started first. */
export const stopOrder = (services: ServiceEntry[]): ServiceEntry[] => [...startOrder(services)].reverse();
