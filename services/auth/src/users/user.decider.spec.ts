import { authEventTypes as A } from '@keel/contracts';
import { deciderSpec, fold } from '@keel/event-sourcing';
import { UserCommand, userDecider, UserEvent } from './user.decider';

const { given } = deciderSpec(userDecider);

const created = (roles = ['viewer'], occurredAt?: string): UserEvent => ({
  type: A.userCreated,
  data: { email: 'ada@acme.test', name: 'Ada', roles },
  ...(occurredAt ? { occurredAt } : {}),
});
const disabled = (): UserEvent => ({ type: A.userDisabled, data: {} });

const everyCommandOnAUser: UserCommand[] = [
  { type: 'disable', data: {} },
  { type: 'enable', data: {} },
  { type: 'set_roles', data: { roles: ['admin'] } },
  { type: 'update_profile', data: { name: 'Ada L.' } },
  { type: 'record_password_change', data: { byAdmin: false } },
  { type: 'record_login_failure', data: { ip: '10.0.0.1' } },
  { type: 'record_lock', data: { until: '2024-01-01T00:15:00.000Z' } },
];

describe('user decider', () => {
  describe('create', () => {
    it('creates a user with its email, name and roles', () => {
      given()
        .when({ type: 'create', data: { email: 'ada@acme.test', name: 'Ada', roles: ['viewer'] } })
        .then([created()]);
    });

    it.each([
      ['an active user', [created()]],
      ['a disabled user', [created(), disabled()]],
    ])('refuses to create %s again with conflict', (_, history) => {
      given(...history).when({ type: 'create', data: { email: 'ada@acme.test', name: 'Ada', roles: [] } }).then({ error: 'conflict' });
    });
  });

  describe('a user that does not exist', () => {
    it.each(everyCommandOnAUser.map((c) => [c.type, c] as const))('refuses %s with not_found', (_, command) => {
      given().when(command).thenRefused('not_found', /No such user/);
    });
  });

  describe('disable and enable', () => {
    it('disables an active user, and decides nothing for a disabled one', () => {
      given(created()).when({ type: 'disable', data: {} }).then([disabled()]);
      given(created(), disabled()).when({ type: 'disable', data: {} }).thenNothing();
    });

    it('enables a disabled user, and decides nothing for an active one', () => {
      given(created(), disabled()).when({ type: 'enable', data: {} }).then([{ type: A.userEnabled, data: {} }]);
      given(created()).when({ type: 'enable', data: {} }).thenNothing();
    });
  });

  describe('set_roles', () => {
    it('records the roles, sorted and without duplicates', () => {
      given(created()).when({ type: 'set_roles', data: { roles: ['viewer', 'admin', 'viewer'] } }).then([{ type: A.userRolesChanged, data: { roles: ['admin', 'viewer'] } }]);
    });

    it('decides nothing for the same roles in another order', () => {
      given(created(['admin', 'viewer'])).when({ type: 'set_roles', data: { roles: ['viewer', 'admin'] } }).thenNothing();
    });
  });

  describe('update_profile', () => {
    it('records a new name, and nothing for the same name', () => {
      given(created()).when({ type: 'update_profile', data: { name: 'Ada L.' } }).then([{ type: A.userProfileUpdated, data: { name: 'Ada L.' } }]);
      given(created()).when({ type: 'update_profile', data: { name: 'Ada' } }).thenNothing();
    });
  });

  describe('facts about credentials and sign-ins', () => {
    it('records a password change, by an administrator or not', () => {
      given(created()).when({ type: 'record_password_change', data: { byAdmin: true } }).then([{ type: A.userPasswordChanged, data: { byAdmin: true } }]);
    });

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
