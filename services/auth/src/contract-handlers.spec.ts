import 'reflect-metadata';
import { KeelError, projectionRpc, rpcs } from '@keel/contracts';
import { ApiKeysService } from './api-keys/api-keys.service';
import { MfaService } from './mfa/mfa.service';
import { PersonalDataService } from './personal-data/personal-data.service';
import { RbacService } from './rbac/rbac.service';
import { SessionsService } from './sessions/sessions.service';
import { IdentityProvidersService } from './sso/identity-providers.service';
import { SsoService } from './sso/sso.service';
import { UsersService } from './users/users.service';

/** Where Nest's @MessagePattern keeps a handler's subjects (PATTERN_METADATA of @nestjs/microservices). */
const PATTERN_METADATA = 'microservices:pattern';

/** The subjects the auth service's @MessagePattern handlers serve. */
function handledSubjects(): string[] {
  const out: string[] = [];
  for (const service of [UsersService, SessionsService, MfaService, ApiKeysService, RbacService, IdentityProvidersService, SsoService, PersonalDataService]) {
    for (const name of Object.getOwnPropertyNames(service.prototype)) {
      const method = (service.prototype as Record<string, unknown>)[name];
      if (typeof method !== 'function') continue;
      const patterns = Reflect.getMetadata(PATTERN_METADATA, method) as unknown[] | undefined;
      for (const p of patterns ?? []) out.push(String(p));
    }
  }
  return out.sort();
}

describe('auth handlers and the contract', () => {
  it('serve exactly the commands and queries the auth contract declares (besides the projection operator subjects)', () => {
    const subjects = (decls: object) => Object.values(decls as Record<string, { subject: string }>).map((d) => d.subject);
    const operator = new Set(subjects((projectionRpc as Record<string, object>).auth ?? {}));
    const declared = subjects(rpcs.auth).filter((s) => !operator.has(s)).sort();
    const handled = handledSubjects();
    expect(handled).toEqual(declared);
  });
});

describe('verify_api_key keeps a secret a credential', () => {
  // A database that holds no keys.
  const none = { query: async () => [] };
  const service = new ApiKeysService({ ...none, transaction: async (fn: (m: typeof none) => unknown) => fn(none) } as never, {} as never);
  const code = async (body: unknown) => (await service.verify(body).catch((e: unknown) => e)) as KeelError;

  it('answers a secret holding a control character, a line break or an unpaired surrogate as a wrong key (401), not a 400', async () => {
    for (const secret of ['keel_\u0000x', `keel_${'a'.repeat(32)}_\u0085${'b'.repeat(32)}`, 'keel_\n', 'keel_\ud800']) {
      expect((await code({ secret })).code).toBe('invalid_token');
    }
  });

  it('still refuses what the contract refuses besides that: a missing, empty or too long secret, another field', async () => {
    expect((await code({})).code).toBe('validation_failed');
    expect((await code({ secret: '' })).code).toBe('validation_failed');
    expect((await code({ secret: `\u0000${'a'.repeat(200)}` })).code).toBe('validation_failed');
    expect((await code({ secret: 'keel_x', other: 1 })).code).toBe('validation_failed');
  });

  it('answers a well-formed key that does not exist as invalid_token', async () => {
    expect((await code({ secret: `keel_${'a'.repeat(32)}_${'b'.repeat(32)}` })).code).toBe('invalid_token');
  });
});
