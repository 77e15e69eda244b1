import { authEventTypes as A } from '@keel/contracts';
import { deciderSpec, fold } from '@keel/event-sourcing';
import { Authority, OverUser, UserCommand, userDecider, UserEvent } from './user.decider';

const { given } = deciderSpec(userDecider);

/** The tenant's roles: two system roles and a custom one. */
const catalog = new Map<string, string[]>([
  ['viewer', ['tenants.read']],
  ['admin', ['tenants.read', 'users.read', 'users.write']],
  ['billing', ['billing.read']],
]);
const operator: Authority = { held: '*', catalog };
const anAdmin: Authority = { held: ['tenants.read', 'users.read', 'users.write'], catalog };
/** An administrator acting on someone else, who holds nothing by assignment. */
const over = (held: Authority['held'] = '*', assigned: string[] = []): OverUser => ({ held, catalog, self: false, assigned });
const noQuota = { maxUsers: null, users: 0 };
const create = (over: Partial<Extract<UserCommand, { type: 'create' }>> = {}): UserCommand => ({
  type: 'create',
  data: { email: 'ada@acme.test', name: 'Ada', roles: ['viewer'] },
  authority: operator,
  quota: noQuota,
  ...over,
});

const created = (roles = ['viewer'], occurredAt?: string): UserEvent => ({
  type: A.userCreated,
  data: { email: 'ada@acme.test', name: 'Ada', roles },
  ...(occurredAt ? { occurredAt } : {}),
});
const disabled = (): UserEvent => ({ type: A.userDisabled, data: {} });

const everyCommandOnAUser: UserCommand[] = [
  { type: 'disable', data: {}, authority: over() },
  { type: 'enable', data: {}, authority: over() },
  { type: 'set_roles', data: { roles: ['admin'] }, authority: over() },
  { type: 'update_profile', data: { name: 'Ada L.' } },
  { type: 'reset_password', password: 'a brand new password', authority: over() },
  { type: 'change_password', password: 'a brand new password', currentPasswordRight: true },
  { type: 'record_login_failure', data: { ip: '10.0.0.1' } },
  { type: 'record_lock', data: { until: '2024-01-01T00:15:00.000Z' } },
  { type: 'erase', data: {}, authority: over() },
];

describe('user decider', () => {
  describe('create', () => {
    it('creates a user with its email, name and roles (sorted, without duplicates); the password never enters an event', () => {
      given()
        .when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: ['viewer', 'admin', 'viewer'] }, password: 'correct horse battery' }))
        .then([{ type: A.userCreated, data: { email: 'ada@acme.test', name: 'Ada', roles: ['admin', 'viewer'] } }]);
    });

    it.each([
      ['an active user', [created()]],
      ['a disabled user', [created(), disabled()]],
    ])('refuses to create %s again with conflict', (_, history) => {
      given(...history).when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: [] } })).then({ error: 'conflict' });
    });

    describe('maxUsers', () => {
      it('creates the last user the plan allows', () => {
        given().when(create({ quota: { maxUsers: 3, users: 2 } })).then([created()]);
      });

      it.each([[3, 3], [3, 7], [0, 0]])('refuses with quota_exceeded when %i allowed and %i others hold a place', (maxUsers, users) => {
        given().when(create({ quota: { maxUsers, users } })).thenRefused('quota_exceeded', `allows ${maxUsers} users; raise the plan's maxUsers first`);
      });

      it('has no quota where the tenant has none (the platform)', () => {
        given().when(create({ quota: { maxUsers: null, users: 1_000_000 } })).then([created()]);
      });
    });

    describe('nobody grants what they do not hold', () => {
      it('lets the caller grant roles whose permissions it holds', () => {
        given().when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: ['admin'] }, authority: anAdmin })).then([created(['admin'])]);
      });

      it('refuses a role carrying a permission the caller lacks, naming it', () => {
        given().when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: ['viewer', 'billing'] }, authority: anAdmin })).thenRefused('forbidden', 'You cannot grant permissions you do not hold: billing.read.');
      });

      it('refuses a role the tenant does not have, even for the operator', () => {
        given().when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: ['ghost'] } })).thenRefused('validation_failed', 'No role "ghost" in this tenant.');
      });

      it('is checked before the quota', () => {
        given().when(create({ data: { email: 'ada@acme.test', name: 'Ada', roles: ['billing'] }, authority: anAdmin, quota: { maxUsers: 1, users: 1 } })).then({ error: 'forbidden' });
      });
    });

    describe('the password policy', () => {
      const refusedFor = (password: string, over: Partial<Extract<UserCommand, { type: 'create' }>> = {}) => {
        try {
          userDecider.decide(create({ password, ...over }), userDecider.initialState());
        } catch (error) {
          return error as { code: string; message: string; fields?: { field: string; message: string }[] };
        }
        throw new Error('expected the password to be refused');
      };

      it.each([
        ['shorter than 12 characters', 'elevenchars', /at least 12 characters/],
        ['longer than 256 characters', 'x'.repeat(257), /at most 256 characters/],
        ['the email address', 'ada@acme.test', /must not be or contain the email address/],
        ['the upper-cased email address', 'ADA@ACME.TEST', /must not be or contain the email address/],
        ['containing the email address', 'my login is Ada@Acme.test!', /must not be or contain the email address/],
        ['a short local part of the email (its length refuses it first)', 'ada', /at least 12 characters/],
        ['a repetition', 'aaaaaaaaaaaa', /too easy to guess \(Repeated characters/],
        ['a common password', 'password1234', /too easy to guess \(This is similar to a commonly used password\)/],
        ['a keyboard walk', '1qaz2wsx3edc', /too easy to guess/],
        ['a sequence', 'abcdefghijklmnop', /too easy to guess/],
        ['a repeated pattern', 'letmeinletmein', /too easy to guess/],
      ])('refuses a password %s', (_, password, message) => {
        given().when(create({ password })).thenRefused('validation_failed', message);
      });

      it("refuses the email's local part, alone or inside, whatever the case", () => {
        const email = 'ada.lovelace.1815@acme.test';
        given().when(create({ data: { email, name: 'Countess', roles: [] }, password: 'Ada.Lovelace.1815' })).thenRefused('validation_failed', /must not be or contain the email address or its local part/);
        given().when(create({ data: { email, name: 'Countess', roles: [] }, password: 'x ADA.LOVELACE.1815 y' })).thenRefused('validation_failed', /email address/);
      });

      it("refuses the user's name or a word of it, whatever the case", () => {
        const data = { email: 'gh@navy.test', name: 'Grace Hopper', roles: [] };
        given().when(create({ data, password: 'GRACE HOPPER was here' })).thenRefused('validation_failed', "The password must not contain the user's name.");
        given().when(create({ data, password: 'graceHopper violets' })).thenRefused('validation_failed', "The password must not contain the user's name.");
        given().when(create({ data, password: 'violet kettle hopper' })).thenRefused('validation_failed', "The password must not contain the user's name.");
      });

      it("refuses the tenant's slug or a word of it", () => {
        given().when(create({ password: 'Umbrella-Corp forever', tenantSlug: 'umbrella-corp' })).thenRefused('validation_failed', "The password must not contain the tenant's slug.");
        given().when(create({ password: 'umbrellacorp violet kettle', tenantSlug: 'umbrella-corp' })).thenRefused('validation_failed', "The password must not contain the tenant's slug.");
        given().when(create({ password: 'violet umbrella kettle', tenantSlug: 'umbrella-corp' })).thenRefused('validation_failed', "The password must not contain the tenant's slug.");
        // The same password where the slug is another one (or none: the platform) is allowed.
        given().when(create({ password: 'violet umbrella kettle', tenantSlug: 'acme' })).then([created()]);
      });

      it('says which rule failed, on the field, without echoing the password', () => {
        for (const [password, detail] of [
          ['aaaaaaaaaaaa', 'is too easy to guess'],
          ['ADA@ACME.TEST', 'must not contain the email address'],
          ['elevenchars', 'must be at least 12 characters'],
        ] as const) {
          const error = refusedFor(password);
          expect(error.code).toBe('validation_failed');
          expect(error.fields).toEqual([{ field: 'password', message: detail }]);
          expect(JSON.stringify(error)).not.toContain(password);
          expect(error.message.toLowerCase()).not.toContain(password.toLowerCase());
        }
      });

      it('allows a passphrase of unrelated words', () => {
        given().when(create({ password: 'violet kettle drums sideways', tenantSlug: 'acme' })).then([created()]);
        given().when(create({ password: 'correct horse battery staple' })).then([created()]);
      });

      it('creates a user without a password (single sign-on, or set later)', () => {
        given().when(create()).then([created()]);
      });
    });
  });

  describe('a user that does not exist', () => {
    it.each(everyCommandOnAUser.map((c) => [c.type, c] as const))('refuses %s with not_found', (_, command) => {
      given().when(command).thenRefused('not_found', /No such user/);
    });
  });

  describe('disable and enable', () => {
    it('disables an active user, and decides nothing for a disabled one', () => {
      given(created()).when({ type: 'disable', data: {}, authority: over() }).then([disabled()]);
      given(created(), disabled()).when({ type: 'disable', data: {}, authority: over() }).thenNothing();
    });

    it('enables a disabled user, and decides nothing for an active one', () => {
      given(created(), disabled()).when({ type: 'enable', data: {}, authority: over() }).then([{ type: A.userEnabled, data: {} }]);
      given(created()).when({ type: 'enable', data: {}, authority: over() }).thenNothing();
    });
  });

  describe('acting on someone else needs everything they hold', () => {
    it('refuses to disable an administrator for someone who holds less, naming what they lack', () => {
      given(created(['admin'])).when({ type: 'disable', data: {}, authority: over(['tenants.read', 'users.write']) }).thenRefused('forbidden', 'users.read');
    });

    it('counts the roles the user holds by assignment too', () => {
      given(created(['viewer'])).when({ type: 'enable', data: {}, authority: over(['tenants.read'], ['billing']) }).thenRefused('forbidden', 'billing.read');
      given(created(['viewer']), disabled()).when({ type: 'enable', data: {}, authority: over(['tenants.read', 'billing.read'], ['billing']) }).then([{ type: A.userEnabled, data: {} }]);
    });

    it('lets a user act on itself whatever it holds', () => {
      given(created(['admin'])).when({ type: 'disable', data: {}, authority: { held: [], catalog, self: true, assigned: [] } }).then([disabled()]);
    });

    it("refuses an administrator's password reset to someone who holds less", () => {
      given(created(['admin'])).when({ type: 'reset_password', password: 'a brand new password', authority: over(['tenants.read']) }).thenRefused('forbidden', /users\.read, users\.write/);
    });
  });

  describe('set_roles', () => {
    it('records the roles, sorted and without duplicates', () => {
      given(created()).when({ type: 'set_roles', data: { roles: ['viewer', 'admin', 'viewer'] }, authority: over() }).then([{ type: A.userRolesChanged, data: { roles: ['admin', 'viewer'] } }]);
    });

    it('decides nothing for the same roles in another order', () => {
      given(created(['admin', 'viewer'])).when({ type: 'set_roles', data: { roles: ['viewer', 'admin'] }, authority: over() }).thenNothing();
    });

    it('refuses roles the caller could not grant, even to itself', () => {
      given(created()).when({ type: 'set_roles', data: { roles: ['admin'] }, authority: { held: ['tenants.read'], catalog, self: true, assigned: [] } }).thenRefused('forbidden', 'You cannot grant permissions you do not hold: users.read, users.write.');
    });

    it('refuses to take roles away from someone who holds more than the caller', () => {
      given(created(['admin', 'billing'])).when({ type: 'set_roles', data: { roles: ['viewer'] }, authority: over(['tenants.read', 'users.read', 'users.write']) }).thenRefused('forbidden', 'billing.read');
    });
  });

  describe('update_profile', () => {
    it('records a new name, and nothing for the same name', () => {
      given(created()).when({ type: 'update_profile', data: { name: 'Ada L.' } }).then([{ type: A.userProfileUpdated, data: { name: 'Ada L.' } }]);
      given(created()).when({ type: 'update_profile', data: { name: 'Ada' } }).thenNothing();
    });
  });

  describe('passwords', () => {
    it('refuses an administrator resetting their own password (that is a change, with the current one and a recent sign-in), also through their own API key', () => {
      given(created(['admin'])).when({ type: 'reset_password', password: 'a brand new password', authority: { ...over(), self: true } }).thenRefused('forbidden', /auth\/password/);
      given(created(['admin'])).when({ type: 'reset_password', password: 'a brand new password', authority: { ...over(), viaOwnKey: true } }).thenRefused('forbidden', /auth\/password/);
    });

    it('gives a key acting on its creator no more than any other caller: it needs all the creator holds to disable them or change their roles', () => {
      given(created(['admin'])).when({ type: 'disable', authority: { ...over(['users.write']), viaOwnKey: true } }).thenRefused('forbidden');
      given(created(['admin'])).when({ type: 'set_roles', data: { roles: [] }, authority: { ...over(['roles.write']), viaOwnKey: true } }).thenRefused('forbidden');
    });

    it("records an administrator's reset and a user's own change, never the password", () => {
      given(created()).when({ type: 'reset_password', password: 'a brand new password', authority: over() }).then([{ type: A.userPasswordChanged, data: { byAdmin: true } }]);
      given(created()).when({ type: 'change_password', password: 'a brand new password', currentPasswordRight: true }).then([{ type: A.userPasswordChanged, data: { byAdmin: false } }]);
    });

    it('refuses a change whose current password is not right', () => {
      given(created()).when({ type: 'change_password', password: 'a brand new password', currentPasswordRight: false }).thenRefused('invalid_credentials', 'The current password is not right.');
    });

    it("applies the policy to a reset and a change (against the user's email, name and tenant)", () => {
      given(created()).when({ type: 'reset_password', password: 'short', authority: over() }).thenRefused('validation_failed', /at least 12/);
      given(created()).when({ type: 'reset_password', password: 'qwertyuiop12', authority: over() }).thenRefused('validation_failed', /too easy to guess/);
      given(created()).when({ type: 'change_password', password: 'Ada@Acme.Test', currentPasswordRight: true }).thenRefused('validation_failed', /must not be or contain the email address/);
      given(created()).when({ type: 'change_password', password: 'violet kettle acme-corp', tenantSlug: 'acme-corp', currentPasswordRight: true }).thenRefused('validation_failed', "The password must not contain the tenant's slug.");
      // The name as it stands now (a profile update changed it).
      const renamed = { type: A.userProfileUpdated, data: { name: 'Lovelace' } } as const;
      given(created(), renamed).when({ type: 'change_password', password: 'violet lovelace kettle', currentPasswordRight: true }).thenRefused('validation_failed', "The password must not contain the user's name.");
    });

    it('names the field of a change as the request does (newPassword)', () => {
      let fields: unknown;
      try {
        userDecider.decide({ type: 'change_password', password: 'short', currentPasswordRight: true }, given(created()).state);
      } catch (error) {
        fields = (error as { fields?: unknown }).fields;
      }
      expect(fields).toEqual([{ field: 'newPassword', message: 'must be at least 12 characters' }]);
    });
  });

  describe('facts about sign-ins', () => {
    it('records a failed sign-in with its address, or without one', () => {
      given(created()).when({ type: 'record_login_failure', data: { ip: '10.0.0.1' } }).then([{ type: A.userLoginFailed, data: { ip: '10.0.0.1' } }]);
      given(created()).when({ type: 'record_login_failure', data: {} }).then([{ type: A.userLoginFailed, data: {} }]);
    });

    it('records a lock until a time, also for a disabled user', () => {
      given(created(), disabled())
        .when({ type: 'record_lock', data: { until: '2024-01-01T00:15:00.000Z' } })
        .then([{ type: A.userLocked, data: { until: '2024-01-01T00:15:00.000Z' } }]);
    });
  });

  describe('erase', () => {
    const erased = (): UserEvent => ({ type: A.userErased, data: {} });
    it('records one erasure without any personal data, also of a disabled user', () => {
      given(created()).when({ type: 'erase', data: {}, authority: over() }).then([{ type: A.userErased, data: {} }]);
      given(created(), disabled()).when({ type: 'erase', data: {}, authority: over() }).then([{ type: A.userErased, data: {} }]);
    });

    it('refuses erasing oneself (or one\'s creator through their key) and someone holding more than the caller', () => {
      given(created()).when({ type: 'erase', data: {}, authority: { ...over(), self: true } }).then({ error: 'forbidden' });
      given(created()).when({ type: 'erase', data: {}, authority: { ...over(), viaOwnKey: true } }).then({ error: 'forbidden' });
      given(created(['admin'])).when({ type: 'erase', data: {}, authority: over(['tenants.read']) }).then({ error: 'forbidden' });
    });

    it('decides nothing when erasing again, and refuses every other command on an erased user', () => {
      given(created(), erased()).when({ type: 'erase', data: {}, authority: over() }).then([]);
      for (const command of everyCommandOnAUser.filter((c) => c.type !== 'erase')) given(created(), erased()).when(command).then({ error: 'conflict' });
    });

    it('forgets what was personal in the state: email and name read "[erased]", no roles', () => {
      expect(fold(userDecider, [created(['admin'], '2024-01-01T00:00:00.000Z'), { ...erased(), occurredAt: '2024-01-02T00:00:00.000Z' }])).toEqual({
        status: 'erased', email: '[erased]', name: '[erased]', roles: [], createdAt: '2024-01-01T00:00:00.000Z', updatedAt: '2024-01-02T00:00:00.000Z',
      });
    });
  });

  describe('evolve', () => {
    it('starts from a user that does not exist', () => {
      expect(userDecider.initialState()).toEqual({ status: 'none' });
    });

    it('folds a history: status, roles and name follow, createdAt stays, updatedAt moves', () => {
      const state = fold(userDecider, [
        created(['viewer'], '2024-01-01T00:00:00.000Z'),
        { type: A.userRolesChanged, data: { roles: ['admin'] }, occurredAt: '2024-01-02T00:00:00.000Z' },
        { type: A.userProfileUpdated, data: { name: 'Ada L.' }, occurredAt: '2024-01-03T00:00:00.000Z' },
        { type: A.userDisabled, data: {}, occurredAt: '2024-01-04T00:00:00.000Z' },
      ]);
      expect(state).toEqual({
        status: 'disabled', email: 'ada@acme.test', name: 'Ada L.', roles: ['admin'],
        createdAt: '2024-01-01T00:00:00.000Z', updatedAt: '2024-01-04T00:00:00.000Z',
      });
    });

    it('ignores events before the creation', () => {
      expect(given(disabled(), { type: A.userRolesChanged, data: { roles: ['admin'] } }).state).toEqual({ status: 'none' });
    });
  });
});
