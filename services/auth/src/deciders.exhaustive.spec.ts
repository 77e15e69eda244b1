import * as path from 'node:path';
import { typeCheckEdited } from '@keel/testing/type-check';

/** The role decider's and the lockout decider's switches are exhaustive: a new event type or command does not compile until handled. */
const cases = [
  {
    file: path.join(__dirname, 'rbac', 'role.decider.ts'),
    event: ["  | { type: typeof A.roleDeleted; data: Record<string, never>; occurredAt?: string };", "  | { type: typeof A.roleDeleted; data: Record<string, never>; occurredAt?: string }\n  | { type: 'auth.role.brand_new'; data: Record<string, never>; occurredAt?: string };"],
    command: ["  | { type: 'delete'; name: string; holders: number };", "  | { type: 'delete'; name: string; holders: number }\n  | { type: 'brand_new'; name: string };"],
  },
  {
    file: path.join(__dirname, 'users', 'lockout.decider.ts'),
    event: ["  | { type: 'lockout.failures_cleared'; data: Record<string, never>; occurredAt?: string }", "  | { type: 'lockout.failures_cleared'; data: Record<string, never>; occurredAt?: string }\n  | { type: 'lockout.brand_new'; data: Record<string, never>; occurredAt?: string }"],
    command: ["  | { type: 'end'; at: number; limit: number; outcome: Outcome };", "  | { type: 'end'; at: number; limit: number; outcome: Outcome }\n  | { type: 'brand_new'; at: number; limit: number };"],
  },
];

describe.each(cases.map((c) => [path.basename(c.file), c] as const))('%s exhaustiveness', (_, c) => {
  const typeCheck = (edit: (source: string) => string) => typeCheckEdited(c.file, edit).join('\n');

  it('compiles as it is', () => {
    expect(typeCheck((s) => `${s}\n`)).toBe('');
  }, 120_000);

  it('a new event type does not compile until evolve handles it', () => {
    const [from, to] = c.event;
    expect(typeCheck((s) => {
      if (!s.includes(from!)) throw new Error(`the event union changed: ${from}`);
      return s.replace(from!, to!);
    })).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);

  it('a new command does not compile until decide decides it', () => {
    const [from, to] = c.command;
    expect(typeCheck((s) => {
      if (!s.includes(from!)) throw new Error(`the command union changed: ${from}`);
      return s.replace(from!, to!);
    })).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);
});
