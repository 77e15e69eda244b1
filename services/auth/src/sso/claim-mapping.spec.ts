import { claimMappingSchema, createIdentityProviderSchema, KeelError } from '@keel/contracts';
import { mapClaims } from './claim-mapping';

const TEAM = '01890a5d-ac96-774b-bcce-b302099a8057';
const mapping = claimMappingSchema.parse({
  roleClaim: 'groups',
  roleMapping: { 'keel-admins': 'tenant_admin', 'keel-devs': 'developer' },
  defaultRoles: ['viewer'],
  teamClaim: 'groups',
  teamMapping: { 'ml-research': { teamId: TEAM, role: 'developer' } },
});
const alice = { sub: 'alice', email: 'Alice@Corp.Test', email_verified: true, name: ' Alice ', groups: ['keel-admins', 'keel-devs', 'ml-research', 'other'] };

function refusal(fn: () => unknown): KeelError {
  try {
    fn();
  } catch (error) {
    return error as KeelError;
  }
  throw new Error('expected a refusal');
}

describe('mapClaims', () => {
  it('maps groups to roles and team roles, and normalises email and name', () => {
    expect(mapClaims(alice, mapping)).toEqual({
      subject: 'alice',
      email: 'alice@corp.test',
      emailVerified: true,
      name: 'Alice',
      roles: ['developer', 'tenant_admin'],
      teamRoles: [{ teamId: TEAM, role: 'developer' }],
    });
  });

  it('gives the default roles to a user none of whose groups is mapped', () => {
    expect(mapClaims({ ...alice, groups: ['staff'] }, mapping)).toMatchObject({ roles: ['viewer'], teamRoles: [] });
  });

  it('reads a single-string group claim, a nested claim path and a URL-named claim', () => {
    expect(mapClaims({ ...alice, groups: 'keel-devs' }, mapping).roles).toEqual(['developer']);
    const nested = claimMappingSchema.parse({ roleClaim: 'realm_access.roles', roleMapping: { admin: 'tenant_admin' } });
    expect(mapClaims({ ...alice, realm_access: { roles: ['admin'] } }, nested).roles).toEqual(['tenant_admin']);
    const namespaced = claimMappingSchema.parse({ roleClaim: 'https://corp.test/groups', roleMapping: { admin: 'security_auditor' } });
    expect(mapClaims({ ...alice, 'https://corp.test/groups': ['admin'] }, namespaced).roles).toEqual(['security_auditor']);
  });

  it('does not take inherited object keys for groups', () => {
    expect(mapClaims({ ...alice, groups: ['constructor', 'toString'] }, mapping).roles).toEqual(['viewer']);
  });

  it('never takes text a profile cannot hold from the provider: a name with control characters falls back to the email, a subject with them is refused', () => {
    expect(mapClaims({ sub: 'x', email: 'x@corp.test', name: 'Eve\u0000' }, mapping).name).toBe('x@corp.test');
    expect(mapClaims({ sub: 'x', email: 'x@corp.test', name: 'E\ud800ve' }, mapping).name).toBe('x@corp.test');
    // Cut at 200 code units without leaving half of a surrogate pair.
    expect(mapClaims({ sub: 'x', email: 'x@corp.test', name: `${'a'.repeat(199)}😀` }, mapping).name).toBe('a'.repeat(199));
    expect(refusal(() => mapClaims({ sub: 'x\u0000', email: 'x@corp.test' }, mapping)).code).toBe('invalid_token');
    expect(refusal(() => mapClaims({ sub: 'x', email: 'x\u0000@corp.test' }, mapping)).code).toBe('forbidden');
  });

  it('treats a missing or non-boolean email_verified as unverified, and falls back to the email for the name', () => {
    expect(mapClaims({ sub: 'x', email: 'x@corp.test', email_verified: 'true' }, mapping)).toMatchObject({ emailVerified: false, name: 'x@corp.test' });
  });

  it('refuses without a subject or an email, and when no role results, saying what to fix', () => {
    expect(refusal(() => mapClaims({ ...alice, sub: '' }, mapping)).code).toBe('invalid_token');
    const noEmail = refusal(() => mapClaims({ ...alice, email: 'not an email' }, mapping));
    expect(noEmail.code).toBe('forbidden');
    expect(noEmail.message).toContain('"email" claim');
    const strict = claimMappingSchema.parse({ roleClaim: 'groups', roleMapping: { 'keel-admins': 'tenant_admin' }, defaultRoles: [] });
    expect(refusal(() => mapClaims({ ...alice, groups: ['staff'] }, strict)).code).toBe('forbidden');
  });
});

describe('identity provider settings', () => {
  const base = { type: 'oidc', name: 'Corp', config: { issuer: 'https://idp.corp.test', clientId: 'keel' }, clientSecret: 's3cret' };

  it('fills the mapping defaults', () => {
    const parsed = createIdentityProviderSchema.parse(base);
    expect(parsed.mapping).toMatchObject({ emailClaim: 'email', nameClaim: 'name', defaultRoles: ['viewer'], roleMapping: {}, teamMapping: {} });
    expect(parsed.redirectUris).toEqual([]);
  });

  it.each([
    ['an http issuer off loopback', { config: { issuer: 'http://idp.corp.test', clientId: 'keel' } }, 'config.issuer'],
    ['an issuer with a query', { config: { issuer: 'https://idp.corp.test/?tenant=1', clientId: 'keel' } }, 'config.issuer'],
    ['platform_admin in the mapping', { mapping: { roleClaim: 'groups', roleMapping: { root: 'platform_admin' } } }, 'mapping.roleMapping.root'],
    ['a role mapping without its claim', { mapping: { roleMapping: { admins: 'tenant_admin' } } }, 'mapping.roleClaim'],
    ['a redirect URI with a fragment', { redirectUris: ['https://app.corp.test/#x'] }, 'redirectUris.0'],
    ['an unknown type', { type: 'saml' }, 'type'],
  ])('refuses %s', (_, change, field) => {
    const result = createIdentityProviderSchema.safeParse({ ...base, ...change });
    expect(result.success).toBe(false);
    expect(result.error!.issues.map((i) => i.path.join('.'))).toContain(field);
  });

  it('accepts http on loopback (development)', () => {
    expect(createIdentityProviderSchema.safeParse({ ...base, config: { issuer: 'http://127.0.0.1:9000', clientId: 'keel' } }).success).toBe(true);
  });
});
