import * as path from 'node:path';
import { typeCheckEdited } from '@keel/testing/type-check';

const deciderFile = path.join(__dirname, 'tenant.decider.ts');

/** Type-checks tenant.decider.ts with `edit` applied to its text: the diagnostics' messages. */
const typeCheck = (edit: (source: string) => string): string[] => typeCheckEdited(deciderFile, edit);

describe('tenant decider exhaustiveness', () => {
  it('compiles as it is', () => {
    expect(typeCheck((s) => `${s}\n`)).toEqual([]);
  }, 120_000);

  it('a new event type does not compile until evolve handles it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace('type Event = TenantEvent & { occurredAt?: string };', "type Event = (TenantEvent | { type: 'tenant.tenant.brand_new'; data: Record<string, never> }) & { occurredAt?: string };"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);

  it('a new command does not compile until decide decides it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace("  | { type: 'close'; data: { reason?: string } };", "  | { type: 'close'; data: { reason?: string } }\n  | { type: 'brand_new'; data: Record<string, never> };"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);
});
