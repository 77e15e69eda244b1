import { z } from 'zod';
import { KeelError } from './errors';
import { fieldErrors, parseOrThrow, queryInteger } from './validation';

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

describe('queryInteger', () => {
  const schema = z.object({ consistentWith: queryInteger().optional(), limit: queryInteger({ min: 1, max: 500 }).default(50) }).strict();

  it.each(['', '0x10', '1e3', ' 1', '1 ', '+1', '-1', '1.0', '١٢'])('refuses %j, naming the parameter', (value) => {
    const result = schema.safeParse({ consistentWith: value });
    expect(result.success).toBe(false);
    expect(result.error!.issues).toEqual([expect.objectContaining({ path: ['consistentWith'], message: expect.stringContaining('plain decimal integer') })]);
  });

  it('refuses a repeated parameter and one out of range', () => {
    expect(schema.safeParse({ consistentWith: ['1', '2'] }).error!.issues[0]).toMatchObject({ path: ['consistentWith'] });
    expect(schema.safeParse({ limit: '0' }).error!.issues[0]).toMatchObject({ path: ['limit'] });
    expect(schema.safeParse({ limit: '501' }).error!.issues[0]).toMatchObject({ path: ['limit'] });
  });

  it('reads plain digits as the number, and applies the default', () => {
    expect(schema.parse({ consistentWith: '0', limit: '500' })).toEqual({ consistentWith: 0, limit: 500 });
    expect(schema.parse({ consistentWith: '9007199254740991' })).toEqual({ consistentWith: Number.MAX_SAFE_INTEGER, limit: 50 });
    expect(schema.safeParse({ consistentWith: '9007199254740992' }).success).toBe(false);
  });
});
