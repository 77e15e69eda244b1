import { manifestServices } from '@keel/service-kit';
import { serviceEnv, serviceNames, Stack } from './stack';

describe('serviceEnv', () => {
  const env = {
    DATABASE_URL: 'postgres://postgres:root-secret@db:5432/keel_x',
    KEEL_TEST_DATABASE_URL: 'postgres://postgres:root-secret@db:5432/postgres',
    KEEL_DB_PASSWORD: 'fallback',
    KEEL_DB_PASSWORD_TENANT: 'tenant-secret',
    KEEL_DB_PASSWORD_AUDIT: 'audit-secret',
    NATS_URL: 'nats://n:4222',
  };

  it("gives a service its own role's URL and no admin URL nor other roles' secrets", () => {
    const e = serviceEnv('tenant', env);
    expect(new URL(e.DATABASE_URL!)).toMatchObject({ username: 'keel_tenant', password: 'tenant-secret', host: 'db:5432', pathname: '/keel_x' });
    expect(Object.keys(e).sort()).toEqual(['DATABASE_URL', 'NATS_URL']);
    expect(JSON.stringify(e)).not.toContain('root-secret');
    expect(JSON.stringify(e)).not.toContain('audit-secret');
  });

  it('falls back to KEEL_DB_PASSWORD for a role without a secret of its own', () => {
    expect(new URL(serviceEnv('auth', env).DATABASE_URL!).password).toBe('fallback');
  });

  it('gives the gateway no database URL at all', () => {
    expect(serviceEnv('gateway', env)).toEqual({ NATS_URL: 'nats://n:4222' });
  });

  it('gives each service only the secrets its manifest line names', () => {
    const secrets = { KEEL_KEK: 'kek', KEEL_BOOTSTRAP_TOKEN: 'token', KEEL_ADMIN_EMAIL: 'a@b.c', KEEL_ADMIN_PASSWORD: 'pw' };
    const given = (name: string) => Object.keys(serviceEnv(name, { ...env, ...secrets })).filter((k) => k in secrets).sort();
    for (const s of manifestServices()) expect({ name: s.name, given: given(s.name) }).toEqual({ name: s.name, given: [...s.secrets].sort() });
    expect(given('tenant')).toEqual(['KEEL_KEK']);
    expect(given('gateway')).toEqual(['KEEL_BOOTSTRAP_TOKEN']);
  });
});

describe('the services of the test stack', () => {
  it('are those of services.manifest.json, the backends first and the gateway last', () => {
    const names = serviceNames();
    const manifest = manifestServices();
    expect([...names].sort()).toEqual(manifest.map((s) => s.name).sort());
    const gateways = manifest.filter((s) => s.kind === 'gateway').map((s) => s.name);
    expect(names.slice(-gateways.length)).toEqual(gateways);
  });

  it('refuses a name the manifest does not have, naming the ones it has', async () => {
    const stack = new Stack({});
    await expect(stack.start('nosuch')).rejects.toThrow(`nosuch is not a service of services.manifest.json (${manifestServices().map((s) => s.name).join(', ')})`);
  });
});
