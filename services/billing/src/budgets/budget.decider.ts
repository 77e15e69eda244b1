import { BudgetBody, billingEventTypes as B, KeelError } from '@keel/contracts';
import { Decider } from '@keel/event-sourcing';
import { timeZoneOf } from '../usage/periods';

export type BudgetData = Omit<BudgetBody, 'scope'> & { scope: { kind: BudgetBody['scope']['kind']; id?: string } };
export type BudgetState = { status: 'none' } | { status: 'active' | 'deleted'; data: BudgetData; createdAt: string; updatedAt: string };
export type BudgetCommand =
  | { type: 'create'; data: BudgetBody }
  | { type: 'update'; data: Partial<Pick<BudgetBody, 'name' | 'limit' | 'thresholds' | 'failMode'>> }
  | { type: 'delete' };
type BudgetEvent =
  | { type: typeof B.budgetCreated; data: BudgetData }
  | { type: typeof B.budgetUpdated; data: { changes: Partial<BudgetData> } }
  | { type: typeof B.budgetDeleted; data: Record<string, never> };

const HARD_RULES = (d: Pick<BudgetData, 'thresholds'>) => {
  if (d.thresholds.filter((t) => t.mode === 'hard').length > 1) throw new KeelError('validation_failed', 'at most one hard threshold', [{ field: 'thresholds', message: 'at most one hard threshold' }]);
};

export const budgetDecider: Decider<BudgetState, BudgetCommand, BudgetEvent> = {
  initialState: () => ({ status: 'none' }),
  evolve(state, e) {
    switch (e.type) {
      case B.budgetCreated:
        return { status: 'active', data: e.data, createdAt: e.occurredAt, updatedAt: e.occurredAt };
      case B.budgetUpdated:
        return state.status === 'none' ? state : { ...state, data: { ...state.data, ...e.data.changes }, updatedAt: e.occurredAt };
      case B.budgetDeleted:
        return state.status === 'none' ? state : { ...state, status: 'deleted', updatedAt: e.occurredAt };
      default:
        return state;
    }
  },
  decide(c, s) {
    if (c.type === 'create') {
      if (s.status !== 'none') throw new KeelError('conflict', 'This budget exists already.');
      timeZoneOf(c.data.period.timeZone);
      const data: BudgetData = { ...c.data, scope: c.data.scope.id === undefined ? { kind: c.data.scope.kind } : { kind: c.data.scope.kind, id: c.data.scope.id } };
      return [{ type: B.budgetCreated, data }];
    }
    if (s.status !== 'active') throw new KeelError('not_found', 'No such budget in this tenant.');
    if (c.type === 'delete') return [{ type: B.budgetDeleted, data: {} }];
    const changes = Object.fromEntries(Object.entries(c.data).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify((s.data as Record<string, unknown>)[k]))) as Partial<BudgetData>;
    if (!Object.keys(changes).length) return [];
    HARD_RULES({ ...s.data, ...changes });
    if (changes.limit !== undefined && s.data.unit === 'tokens' && changes.limit.includes('.')) {
      throw new KeelError('validation_failed', 'a token budget is a whole number of tokens', [{ field: 'limit', message: 'a token budget is a whole number of tokens' }]);
    }
    if (changes.limit !== undefined && Number(changes.limit) <= 0) throw new KeelError('validation_failed', 'limit must be more than 0', [{ field: 'limit', message: 'must be more than 0' }]);
    return [{ type: B.budgetUpdated, data: { changes } }];
  },
};
