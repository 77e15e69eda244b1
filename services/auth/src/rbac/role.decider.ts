import { authEventTypes as A, KeelError } from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';
import { Held, requireDefinable } from './authority';

/**
 * A tenant's custom role. State-stored (its row in `auth.roles` is its state, its events go
 * through the transactional outbox): the service reads the row under a per-name lock, this
 * decides, and the service writes what the events say and records them in the same transaction.
 * System roles have no row and are never decided here (the contract refuses their names).
 */
export type RoleState = { status: 'none' } | { status: 'custom'; description: string; permissions: string[] };

export type RoleDefinition = {
  description: string;
  permissions: string[];
};

export type RoleCommand =
  /** `held`: what the caller holds; a role cannot carry permissions its author lacks. */
  | { type: 'create'; name: string; data: RoleDefinition; held: Held }
  | { type: 'update'; name: string; data: RoleDefinition; held: Held }
  /** `holders`: users holding the role (their own roles or an assignment), counted by the service. */
  | { type: 'delete'; name: string; holders: number };

export type RoleEvent =
  | { type: typeof A.roleCreated; data: RoleDefinition; occurredAt?: string }
  | { type: typeof A.roleUpdated; data: RoleDefinition; occurredAt?: string }
  | { type: typeof A.roleDeleted; data: Record<string, never>; occurredAt?: string };

export const roleDecider: Decider<RoleState, RoleCommand, RoleEvent> = {
  initialState: () => ({ status: 'none' }),

  evolve(state, event) {
    switch (event.type) {
      case A.roleCreated:
      case A.roleUpdated:
        return { status: 'custom', description: event.data.description, permissions: [...event.data.permissions] };
      case A.roleDeleted:
        return { status: 'none' };
      default: {
        // A new event type does not compile until it is handled above.
        const _exhaustive: never = event;
        return state;
      }
    }
  },

  decide(command, state) {
    switch (command.type) {
      case 'create':
        requireDefinable(command.held, command.data.permissions);
        if (state.status !== 'none') {
          throw new KeelError('conflict', `A role "${command.name}" already exists in this tenant.`, [{ field: 'name', message: 'already exists' }]);
        }
        return [{ type: A.roleCreated, data: { description: command.data.description, permissions: command.data.permissions } }];
      case 'update':
        requireDefinable(command.held, command.data.permissions);
        if (state.status === 'none') throw new KeelError('not_found', `No custom role "${command.name}" in this tenant (system roles cannot change).`);
        return [{ type: A.roleUpdated, data: { description: command.data.description, permissions: command.data.permissions } }];
      case 'delete':
        if (command.holders > 0) throw new KeelError('conflict', `Role "${command.name}" is still granted; take it away from its holders first.`);
        if (state.status === 'none') throw new KeelError('not_found', `No custom role "${command.name}" in this tenant.`);
        return [{ type: A.roleDeleted, data: {} }];
      default: {
        // A new command does not compile until it is decided above.
        const _exhaustive: never = command;
        throw new KeelError('validation_failed', `Unknown role command ${(_exhaustive as { type: string }).type}.`);
      }
    }
  },
};
