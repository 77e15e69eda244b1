import { KeelError } from '@keel/contracts';
import { Catalog, Held, lacking, permissionsOf, requireDefinable, requireGrantable, requireHoldsAll } from './authority';

/**
 * The authority rule is a set of pure functions, not a Decider: it has no state and yields no
 * events (the user and role deciders, and the grant and identity-provider checks, apply it).
 * Written in the same given / when / then shape: given what the caller holds and the tenant's
 * roles, when it grants, then it is allowed or refused.
 */
const catalog: Catalog = new Map([
  ['viewer', ['tenants.read']],
  ['admin', ['tenants.read', 'users.read', 'users.write']],
  ['billing', ['billing.read']],
]);

function given(held: Held) {
  return {
    whenGranting(roles: string[]) {
      const run = () => requireGrantable(held, catalog, roles);
      return {
        thenAllowed: () => expect(run).not.toThrow(),
        thenRefused(code: string, message: string | RegExp) {
          let error: unknown;
          try {
            run();
          } catch (e) {
            error = e;
          }
          expect(error).toBeInstanceOf(KeelError);
          expect((error as KeelError).code).toBe(code);
          expect((error as KeelError).message).toMatch(message);
        },
      };
    },
  };
}

describe('authority: nobody grants what they do not hold', () => {
  it('given every permission of the roles, granting them is allowed', () => {
    given(['tenants.read', 'users.read', 'users.write']).whenGranting(['admin', 'viewer']).thenAllowed();
  });

  it('given the operator ("*"), granting any role of the tenant is allowed', () => {
    given('*').whenGranting(['admin', 'billing']).thenAllowed();
  });

  it('given less than a role carries, granting it is refused, naming each permission lacking once', () => {
    given(['tenants.read']).whenGranting(['admin', 'admin']).thenRefused('forbidden', 'You cannot grant permissions you do not hold: users.read, users.write.');
  });

  it('given anyone, granting a role the tenant does not have is refused as invalid input', () => {
    given('*').whenGranting(['ghost']).thenRefused('validation_failed', 'No role "ghost" in this tenant.');
  });

  it('given nothing, granting no roles is allowed', () => {
    given([]).whenGranting([]).thenAllowed();
  });

  it('a role cannot be defined with permissions its author lacks', () => {
    expect(() => requireDefinable(['billing.read'], ['billing.read'])).not.toThrow();
    expect(() => requireDefinable(['billing.read'], ['billing.read', 'users.write'])).toThrow('A role cannot hold permissions you lack: users.write.');
  });

  it('acting on someone needs all they hold', () => {
    expect(() => requireHoldsAll(['a'], new Set(['a', 'b']))).toThrow(/do not hold: b\./);
  });

  it('the building blocks: union of permissions, what is lacking', () => {
    expect([...permissionsOf(catalog, ['viewer', 'billing'])].sort()).toEqual(['billing.read', 'tenants.read']);
    expect(lacking('*', ['anything'])).toEqual([]);
    expect(lacking(['a'], ['a', 'b', 'b'])).toEqual(['b']);
  });
});
