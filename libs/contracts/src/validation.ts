import { z } from 'zod';
import { FieldError, KeelError } from './errors';
import { text } from './text';

export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((issue) => ({
    field: issue.path.length ? issue.path.join('.') : '(body)',
    message: issue.message,
  }));
}

/** Parses `input` or throws a `validation_failed` KeelError listing every offending field. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown, what = 'request'): z.infer<S> {
  const result = schema.safeParse(input);
  if (!result.success) {
    const fields = fieldErrors(result.error);
    throw new KeelError(
      'validation_failed',
      `The ${what} is invalid: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`,
      fields,
    );
  }
  return result.data;
}

const DECIMAL = /^[0-9]{1,16}$/;

/**
 * An integer in a query string (or path): plain decimal digits only, so `''`, `0x10`, `1e3`,
 * `' 1'`, `+1`, `1.0` and a repeated parameter are refused (400 naming the parameter) where
 * `z.coerce.number()` would have read them as numbers. The OpenAPI document shows an integer.
 */
export function queryInteger(o: { min?: number; max?: number } = {}) {
  const min = o.min ?? 0;
  const max = o.max ?? Number.MAX_SAFE_INTEGER;
  return text()
    .regex(DECIMAL, 'must be a plain decimal integer (digits only, no sign, spaces, exponent or fraction)')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))
    .meta({
      override: ({ jsonSchema }: { jsonSchema: Record<string, unknown> }) => {
        delete jsonSchema.pattern;
        Object.assign(jsonSchema, { type: 'integer', minimum: min, maximum: max });
      },
    });
}
