import { z } from 'zod';
import { KeelError } from './errors';
import { fieldErrors, parseOrThrow } from './validation';

const schema = z.object({ name: z.string().min(1), settings: z.object({ ranges: z.array(z.string().min(3)) }) }).strict();

describe('parseOrThrow', () => {
  it('returns the parsed value', () => {
    const input = { name: 'a', settings: { ranges: ['abc'] } };
    expect(parseOrThrow(schema, input)).toEqual(input);
  });

  it('throws validation_failed listing every offending field by its dotted path', () => {
    let thrown: unknown;
    try {
      parseOrThrow(schema, { name: '', settings: { ranges: ['abc', 'x'] } }, 'tenant');
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(KeelError);
    const e = thrown as KeelError;
    expect(e.code).toBe('validation_failed');
    expect(e.fields?.map((f) => f.field)).toEqual(['name', 'settings.ranges.1']);
    expect(e.message).toMatch(/^The tenant is invalid: name: .+; settings\.ranges\.1: .+$/);
  });
});

describe('fieldErrors', () => {
  it('names a root-level problem (body)', () => {
    const result = z.string().safeParse(42);
    if (result.success) throw new Error('expected a failure');
    expect(fieldErrors(result.error)).toEqual([{ field: '(body)', message: expect.any(String) }]);
  });
});
