import {
  DEFAULT_TENANT_SETTINGS,
  KeelError,
  PLAN_QUOTAS,
  Plan,
  Quotas,
  Tenant,
  TenantEvent,
  tenantEventTypes as T,
  TenantSettings,
  TenantStatus,
} from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';

export type TenantState =
  | { status: 'none' }
  | {
      status: TenantStatus;
      slug: string;
      name: string;
      plan: Plan;
      quotas: Quotas;
      settings: TenantSettings;
      suspendedReason: string | null;
      createdAt: string;
      updatedAt: string;
    };

export type TenantDecisionCommand =
  | { type: 'create'; data: { slug: string; name: string; plan: Plan; quotas?: Quotas } }
  | { type: 'change_plan'; data: { plan: Plan; quotas?: Quotas } }
  | { type: 'update_settings'; data: Partial<TenantSettings> }
  | { type: 'suspend'; data: { reason: string } }
  | { type: 'reactivate'; data: Record<string, never> }
  | { type: 'close'; data: { reason?: string } };

type Event = TenantEvent & { occurredAt?: string };

export function quotasFor(plan: Plan, explicit?: Quotas): Quotas {
  if (plan === 'custom') {
    if (!explicit) throw new KeelError('validation_failed', 'plan "custom" needs explicit quotas', [{ field: 'quotas', message: 'required for plan "custom"' }]);
    return explicit;
  }
  return { ...PLAN_QUOTAS[plan] };
}

/** Field-by-field equality of two flat records (key order does not matter). */
function sameValues<T extends object>(a: T, b: T): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof T>;
  return [...keys].every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

function refuse(message: string): never {
  throw new KeelError('invalid_transition', message);
}

export const tenantDecider: Decider<TenantState, TenantDecisionCommand, Event> = {
  initialState: () => ({ status: 'none' }),

  evolve(state, event) {
    const at = event.occurredAt;
    if (event.type === T.created) {
      return { status: 'active', ...event.data, suspendedReason: null, createdAt: at, updatedAt: at };
    }
    if (state.status === 'none') return state;
    switch (event.type) {
      case T.planChanged:
        return { ...state, plan: event.data.plan, quotas: event.data.quotas, updatedAt: at };
      case T.settingsUpdated:
        return { ...state, settings: event.data.settings, updatedAt: at };
      case T.suspended:
        return { ...state, status: 'suspended', suspendedReason: event.data.reason, updatedAt: at };
      case T.reactivated:
        return { ...state, status: 'active', suspendedReason: null, updatedAt: at };
      case T.closed:
        return { ...state, status: 'closed', updatedAt: at };
      default: {
        // A new event type does not compile until it is handled above.
        const _exhaustive: never = event;
        return state;
      }
    }
  },

  decide(command, state) {
    if (command.type === 'create') {
      if (state.status !== 'none') throw new KeelError('conflict', 'This tenant already exists.');
      const { slug, name, plan, quotas } = command.data;
      return [{ type: T.created, data: { slug, name, plan, quotas: quotasFor(plan, quotas), settings: { ...DEFAULT_TENANT_SETTINGS } } }];
    }
    if (state.status === 'none') throw new KeelError('not_found', 'No such tenant.');
    if (state.status === 'closed') throw new KeelError('tenant_closed', 'This tenant is closed and accepts no further changes.');
    switch (command.type) {
      case 'change_plan': {
        const quotas = quotasFor(command.data.plan, command.data.quotas);
        if (command.data.plan === state.plan && sameValues(quotas, state.quotas)) return [];
        return [{ type: T.planChanged, data: { plan: command.data.plan, quotas, previousPlan: state.plan } }];
      }
      case 'update_settings': {
        const settings = { ...state.settings, ...command.data };
        if (sameValues(settings, state.settings)) return [];
        return [{ type: T.settingsUpdated, data: { changes: command.data, settings } }];
      }
      case 'suspend':
        if (state.status === 'suspended') refuse('This tenant is already suspended.');
        return [{ type: T.suspended, data: { reason: command.data.reason } }];
      case 'reactivate':
        if (state.status === 'active') refuse('This tenant is active; only a suspended tenant can be reactivated.');
        return [{ type: T.reactivated, data: {} }];
      case 'close':
        return [{ type: T.closed, data: command.data.reason ? { reason: command.data.reason } : {} }];
      default: {
        // A new command does not compile until it is decided above.
        const _exhaustive: never = command;
        throw new KeelError('validation_failed', `Unknown tenant command ${(_exhaustive as { type: string }).type}.`);
      }
    }
  },
};

/** The public view of a tenant aggregate. */
export function toTenant(id: string, state: TenantState, version: number): Tenant {
  if (state.status === 'none') throw new KeelError('not_found', 'No such tenant.');
  return {
    id,
    slug: state.slug,
    name: state.name,
    plan: state.plan,
    quotas: state.quotas,
    settings: state.settings,
    status: state.status,
    suspendedReason: state.suspendedReason,
    version,
    createdAt: state.createdAt,
    updatedAt: state.updatedAt,
  };
}
