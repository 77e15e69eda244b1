import { authEventTypes as A, ERASED, KeelError } from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';
import { Catalog, Held, permissionsOf, requireGrantable, requireHoldsAll } from '../rbac/authority';
import { requirePasswordAllowed } from './password-policy';

export type UserState =
  | { status: 'none' }
  | { status: 'active' | 'disabled' | 'erased'; email: string; name: string; roles: string[]; createdAt: string; updatedAt: string };

/**
 * What a caller brings to a decision on access: what it holds, and the tenant's roles. The service
 * gathers both (the gateway's verified permissions, the role catalog); the decider applies the
 * rule "nobody grants what they do not hold" (rbac/authority.ts).
 */
export interface Authority {
  held: Held;
  catalog: Catalog;
}

/**
 * Acting on someone's credentials or access (disable, enable, roles, a password reset) needs
 * everything that person holds, unless it is oneself: else resetting an administrator's password
 * would make its holder one. The decider knows the user's own roles; the service adds the roles
 * granted by assignment (any scope).
 */
export interface OverUser extends Authority {
  self: boolean;
  /** An API key acting on the user who made it: not `self` (it needs all the user holds), but never a password reset. */
  viaOwnKey?: boolean;
  assigned: readonly string[];
}

/** The tenant's `maxUsers` (null: no quota, the platform tenant) and how many other users hold a place. */
export interface UserQuota {
  maxUsers: number | null;
  users: number;
}

export type UserCommand =
  /** `tenantSlug`: the tenant's (none on the platform), which a password must not contain. */
  | { type: 'create'; data: { email: string; name: string; roles: string[] }; password?: string; tenantSlug?: string; authority: Authority; quota: UserQuota }
  | { type: 'disable'; data: Record<string, never>; authority: OverUser }
  | { type: 'enable'; data: Record<string, never>; authority: OverUser }
  | { type: 'set_roles'; data: { roles: string[] }; authority: OverUser }
  | { type: 'update_profile'; data: { name: string } }
  /** An administrator sets the password (a secret: checked against the policy, never in an event). */
  | { type: 'reset_password'; password: string; tenantSlug?: string; authority: OverUser }
  /** The user changes its own password; the service verified the current one (Argon2) and says so. */
  | { type: 'change_password'; password: string; tenantSlug?: string; currentPasswordRight: boolean }
  | { type: 'record_login_failure'; data: { ip?: string } }
  | { type: 'record_lock'; data: { until: string } }
  /** Forget the person (GDPR Art. 17): final; the service destroys their data key, credentials and sessions after the event. */
  | { type: 'erase'; data: Record<string, never>; authority: OverUser };

export type UserEvent =
  | { type: typeof A.userCreated; data: { email: string; name: string; roles: string[] }; occurredAt?: string }
  | { type: typeof A.userDisabled; data: Record<string, never>; occurredAt?: string }
  | { type: typeof A.userEnabled; data: Record<string, never>; occurredAt?: string }
  | { type: typeof A.userRolesChanged; data: { roles: string[] }; occurredAt?: string }
  | { type: typeof A.userProfileUpdated; data: { name: string }; occurredAt?: string }
  | { type: typeof A.userPasswordChanged; data: { byAdmin: boolean }; occurredAt?: string }
  | { type: typeof A.userLoginFailed; data: { ip?: string }; occurredAt?: string }
  | { type: typeof A.userLocked; data: { until: string }; occurredAt?: string }
  | { type: typeof A.userErased; data: Record<string, never>; occurredAt?: string }
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
      // What was personal reads "[erased]" from here on (and, from the log, once the key is gone).
      case A.userErased:
        return { ...state, status: 'erased', email: ERASED, name: ERASED, roles: [], updatedAt: at };
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
      const { data, authority, quota } = command;
      requireGrantable(authority.held, authority.catalog, data.roles);
      if (command.password !== undefined) requirePasswordAllowed(command.password, { email: data.email, name: data.name, tenantSlug: command.tenantSlug });
      if (quota.maxUsers !== null && quota.users >= quota.maxUsers) {
        throw new KeelError('quota_exceeded', `This tenant's plan allows ${quota.maxUsers} users; raise the plan's maxUsers first.`);
      }
      return [{ type: A.userCreated, data: { email: data.email, name: data.name, roles: [...new Set(data.roles)].sort() } }];
    }
    if (state.status === 'none') throw new KeelError('not_found', 'No such user.');
    if (state.status === 'erased') {
      // Erasing again changes nothing (a retry finishes what the first one did not); nothing else applies.
      if (command.type === 'erase') return [];
      throw new KeelError('conflict', 'This user was erased; nothing can be done with them any more.');
    }
    switch (command.type) {
      case 'disable':
        mayActOn(state, command.authority);
        return state.status === 'disabled' ? [] : [{ type: A.userDisabled, data: {} }];
      case 'enable':
        mayActOn(state, command.authority);
        return state.status === 'active' ? [] : [{ type: A.userEnabled, data: {} }];
      case 'set_roles': {
        requireGrantable(command.authority.held, command.authority.catalog, command.data.roles);
        mayActOn(state, command.authority);
        const roles = [...new Set(command.data.roles)].sort();
        return roles.join() === [...state.roles].sort().join() ? [] : [{ type: A.userRolesChanged, data: { roles } }];
      }
      case 'update_profile':
        return command.data.name === state.name ? [] : [{ type: A.userProfileUpdated, data: command.data }];
      case 'reset_password':
        // One's own password is changed with the current one (POST /auth/password, a step-up route):
        // a stolen administrator's token must not reset it and sign in afresh.
        if (command.authority.self || command.authority.viaOwnKey) throw new KeelError('forbidden', 'Change your own password with POST /api/v1/auth/password (it needs the current one and a recent sign-in).');
        mayActOn(state, command.authority);
        requirePasswordAllowed(command.password, { email: state.email, name: state.name, tenantSlug: command.tenantSlug });
        return [{ type: A.userPasswordChanged, data: { byAdmin: true } }];
      case 'change_password':
        if (!command.currentPasswordRight) throw new KeelError('invalid_credentials', 'The current password is not right.');
        requirePasswordAllowed(command.password, { email: state.email, name: state.name, tenantSlug: command.tenantSlug }, 'newPassword');
        return [{ type: A.userPasswordChanged, data: { byAdmin: false } }];
      case 'record_login_failure':
        return [{ type: A.userLoginFailed, data: command.data.ip ? { ip: command.data.ip } : {} }];
      case 'record_lock':
        return [{ type: A.userLocked, data: command.data }];
      case 'erase':
        // Another administrator erases a person, one who holds everything they hold: nobody erases themselves.
        if (command.authority.self || command.authority.viaOwnKey) throw new KeelError('forbidden', 'Nobody erases themselves: another administrator does.');
        mayActOn(state, command.authority);
        return [{ type: A.userErased, data: {} }];
      default: {
        // A new command does not compile until it is decided above.
        const _exhaustive: never = command;
        throw new KeelError('validation_failed', `Unknown user command ${(_exhaustive as { type: string }).type}.`);
      }
    }
  },
};

/** Someone other than the user must hold every permission the user holds (its own roles and its assigned ones). */
export function mayActOn(state: Exclude<UserState, { status: 'none' }>, authority: OverUser): void {
  if (authority.self) return;
  requireHoldsAll(authority.held, permissionsOf(authority.catalog, new Set([...state.roles, ...authority.assigned])));
}
