import * as path from 'node:path';
import { typeCheckEdited } from '@keel/testing/type-check';
import { authEventTypes as A } from '@keel/contracts';
import { fold } from '@keel/event-sourcing';
import { userDecider, UserEvent } from './user.decider';

const deciderFile = path.join(__dirname, 'user.decider.ts');

/** Type-checks user.decider.ts with `edit` applied to its text: the diagnostics' messages. */
const typeCheck = (edit: (source: string) => string): string[] => typeCheckEdited(deciderFile, edit);

describe('user decider exhaustiveness', () => {
  it('compiles as it is', () => {
    expect(typeCheck((s) => `${s}\n`)).toEqual([]);
  }, 120_000);

  it('a new event type does not compile until evolve handles it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace('  | LegacyMfaEvent;', "  | LegacyMfaEvent\n  | { type: 'auth.user.brand_new'; data: Record<string, never>; occurredAt?: string };"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);

  it('a new command does not compile until decide decides it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace("  | { type: 'record_lock'; data: { until: string } }\n", "  | { type: 'record_lock'; data: { until: string } }\n  | { type: 'brand_new'; data: Record<string, never> }\n"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);
});

describe('old MFA events on a user subject', () => {
  it('leave the user as it was', () => {
    const created: UserEvent = { type: A.userCreated, data: { email: 'ada@acme.test', name: 'Ada', roles: ['viewer'] }, occurredAt: '2024-01-01T00:00:00.000Z' };
    const mfa: UserEvent[] = [
      { type: A.userMfaEnrolmentStarted, data: { factorId: 'f' }, occurredAt: '2024-01-02T00:00:00.000Z' },
      { type: A.userMfaEnrolled, data: { factorId: 'f' }, occurredAt: '2024-01-02T00:00:00.000Z' },
      { type: A.userRecoveryCodeUsed, data: {}, occurredAt: '2024-01-02T00:00:00.000Z' },
      { type: A.userMfaRemoved, data: { factorId: 'f' }, occurredAt: '2024-01-02T00:00:00.000Z' },
    ];
    expect(fold(userDecider, [created, ...mfa])).toEqual(fold(userDecider, [created]));
  });
});
