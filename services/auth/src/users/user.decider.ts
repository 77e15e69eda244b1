import { authEventTypes as A, KeelError } from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';

export type UserState =
  | { status: 'none' }
  | { status: 'active' | 'disabled'; email: string; name: string; roles: string[]; createdAt: string; updatedAt: string };

export type UserCommand =
  | { type: 'create'; data: { email: string; name: string; roles: string[] } }
  | { type: 'disable'; data: Record<string, never> }
  | { type: 'enable'; data: Record<string, never> }
  | { type: 'set_roles'; data: { roles: string[] } }
  | { type: 'update_profile'; data: { name: string } }
  | { type: 'record_password_change'; data: { byAdmin: boolean } }
  | { type: 'record_login_failure'; data: { ip?: string } }
  | { type: 'record_lock'; data: { until: string } };

export type UserEvent =
  | { type: typeof A.userCreated; data: { email: string; name: string; roles: string[] }; occurredAt?: string }
  | { type: typeof A.userDisabled; data: Record<string, never>; occurredAt?: string }
  | { type: typeof A.userEnabled; data: Record<string, never>; occurredAt?: string }
  | { type: typeof A.userRolesChanged; data: { roles: string[] }; occurredAt?: string }
  | { type: typeof A.userProfileUpdated; data: { name: string }; occurredAt?: string }
  | { type: typeof A.userPasswordChanged; data: { byAdmin: boolean }; occurredAt?: string }
  | { type: typeof A.userLoginFailed; data: { ip?: string }; occurredAt?: string }
  | { type: typeof A.userLocked; data: { until: string }; occurredAt?: string }
  | LegacyMfaEvent;

/**
 * MFA events as old user subjects hold them (the MFA factor is its own aggregate now, but its
 * event types kept their `auth.user.*` names): a user's state takes nothing from them, and no
 * command of the user decides them.
 */
export type LegacyMfaEvent = {
  type: typeof A.userMfaEnrolmentStarted | typeof A.userMfaEnrolled | typeof A.userMfaRemoved | typeof A.userRecoveryCodeUsed;
  data: Record<string, unknown>;
  occurredAt?: string;
};

export const userDecider: Decider<UserState, UserCommand, UserEvent> = {
  initialState: () => ({ status: 'none' }),

  evolve(state, event) {
    const at = event.occurredAt;
    if (event.type === A.userCreated) return { status: 'active', ...event.data, createdAt: at, updatedAt: at };
    if (state.status === 'none') return state;
    switch (event.type) {
      case A.userDisabled:
        return { ...state, status: 'disabled', updatedAt: at };
      case A.userEnabled:
        return { ...state, status: 'active', updatedAt: at };
      case A.userRolesChanged:
        return { ...state, roles: event.data.roles, updatedAt: at };
      case A.userProfileUpdated:
        return { ...state, name: event.data.name, updatedAt: at };
      // Recorded for the trail and for lockout (which keeps its own counters): the user's state
      // holds nothing of them.
      case A.userPasswordChanged:
      case A.userLoginFailed:
      case A.userLocked:
        return state;
      case A.userMfaEnrolmentStarted:
      case A.userMfaEnrolled:
      case A.userMfaRemoved:
      case A.userRecoveryCodeUsed:
        return state;
      default: {
        // A new event type does not compile until it is handled above.
        const _exhaustive: never = event;
        return state;
      }
    }
  },

  decide(command, state) {
    if (command.type === 'create') {
      if (state.status !== 'none') throw new KeelError('conflict', 'This user already exists.');
      return [{ type: A.userCreated, data: command.data }];
    }
    if (state.status === 'none') throw new KeelError('not_found', 'No such user.');
    switch (command.type) {
      case 'disable':
        return state.status === 'disabled' ? [] : [{ type: A.userDisabled, data: {} }];
      case 'enable':
        return state.status === 'active' ? [] : [{ type: A.userEnabled, data: {} }];
      case 'set_roles': {
        const roles = [...new Set(command.data.roles)].sort();
        return roles.join() === [...state.roles].sort().join() ? [] : [{ type: A.userRolesChanged, data: { roles } }];
      }
      case 'update_profile':
        return command.data.name === state.name ? [] : [{ type: A.userProfileUpdated, data: command.data }];
      case 'record_password_change':
        return [{ type: A.userPasswordChanged, data: command.data }];
      case 'record_login_failure':
        return [{ type: A.userLoginFailed, data: command.data.ip ? { ip: command.data.ip } : {} }];
      case 'record_lock':
        return [{ type: A.userLocked, data: command.data }];
      default: {
        // A new command does not compile until it is decided above.
        const _exhaustive: never = command;
        throw new KeelError('validation_failed', `Unknown user command ${(_exhaustive as { type: string }).type}.`);
      }
    }
  },
};
