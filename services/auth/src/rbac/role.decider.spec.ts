import { authEventTypes as A } from '@keel/contracts';
import { deciderSpec, fold } from '@keel/event-sourcing';
import { RoleCommand, roleDecider, RoleEvent } from './role.decider';

/** given (the role's past events, i.e. what its row says) / when (command) / then (events or a refusal). */
const { given } = deciderSpec(roleDecider);

const definition = { description: 'Reads invoices', permissions: ['billing.read'] };
const created = (d = definition): RoleEvent => ({ type: A.roleCreated, data: d });
const deleted = (): RoleEvent => ({ type: A.roleDeleted, data: {} });
const held = ['billing.read', 'tenants.read'];

describe('role decider', () => {
  describe('create', () => {
    it('creates a role carrying permissions its author holds', () => {
      given().when({ type: 'create', name: 'billing', data: definition, held }).then([created()]);
      given().when({ type: 'create', name: 'billing', data: definition, held: '*' }).then([created()]);
    });

    it('refuses a role carrying a permission its author lacks, naming it', () => {
      given()
        .when({ type: 'create', name: 'billing', data: { description: '', permissions: ['billing.read', 'users.write'] }, held })
        .thenRefused('forbidden', 'A role cannot hold permissions you lack: users.write.');
    });

    it('refuses a name the tenant already has with conflict', () => {
      given(created()).when({ type: 'create', name: 'billing', data: definition, held }).thenRefused('conflict', 'A role "billing" already exists in this tenant.');
    });

    it('creates a role again under the name of a deleted one', () => {
      given(created(), deleted()).when({ type: 'create', name: 'billing', data: definition, held }).then([created()]);
    });
  });

  describe('update', () => {
    it('records the new description and permissions, also when they are the same', () => {
      const changed = { description: 'Reads tenants too', permissions: ['billing.read', 'tenants.read'] };
      given(created()).when({ type: 'update', name: 'billing', data: changed, held }).then([{ type: A.roleUpdated, data: changed }]);
      given(created()).when({ type: 'update', name: 'billing', data: definition, held }).then([{ type: A.roleUpdated, data: definition }]);
    });

    it('refuses permissions its author lacks before anything else', () => {
      given().when({ type: 'update', name: 'billing', data: { description: '', permissions: ['users.write'] }, held }).thenRefused('forbidden', /users\.write/);
    });

    it('refuses a role that does not exist (or is a system role) with not_found', () => {
      given().when({ type: 'update', name: 'viewer', data: definition, held }).thenRefused('not_found', 'system roles cannot change');
      given(created(), deleted()).when({ type: 'update', name: 'billing', data: definition, held }).thenRefused('not_found');
    });
  });

  describe('delete', () => {
    it('deletes a role nobody holds', () => {
      given(created()).when({ type: 'delete', name: 'billing', holders: 0 }).then([deleted()]);
    });

    it('refuses while anyone holds it, with conflict', () => {
      given(created()).when({ type: 'delete', name: 'billing', holders: 2 }).thenRefused('conflict', 'Role "billing" is still granted; take it away from its holders first.');
    });

    it('refuses a role that does not exist with not_found', () => {
      const command: RoleCommand = { type: 'delete', name: 'billing', holders: 0 };
      given().when(command).thenRefused('not_found', 'No custom role "billing" in this tenant.');
      given(created(), deleted()).when(command).thenRefused('not_found');
    });
  });

  describe('evolve', () => {
    it('folds a role as its row holds it: created, updated, deleted', () => {
      const at = '2024-01-01T00:00:00.000Z';
      expect(fold(roleDecider, [{ ...created(), occurredAt: at }])).toEqual({ status: 'custom', ...definition });
      expect(fold(roleDecider, [{ ...created(), occurredAt: at }, { type: A.roleUpdated, data: { description: 'x', permissions: [] }, occurredAt: at }])).toEqual({ status: 'custom', description: 'x', permissions: [] });
      expect(fold(roleDecider, [{ ...created(), occurredAt: at }, { ...deleted(), occurredAt: at }])).toEqual({ status: 'none' });
    });
  });
});
