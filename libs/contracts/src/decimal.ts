import { z } from 'zod';
import { text } from './text';

const DECIMAL = /^(0|[1-9][0-9]{0,17})(\.[0-9]{1,9})?$/;

/**
 * An exact non-negative decimal: a JSON string (`"1234.5"`) or a number written without exponent
 * (`1234.5`), up to 18 integer and 9 fraction digits. Answered and stored as its canonical text
 * (no trailing fraction zeros), never as a binary float.
 */
export const decimalSchema = z
  .union([text(), z.number()])
  .transform((v, ctx) => {
    const s = typeof v === 'number' ? (Number.isFinite(v) ? String(v) : '') : v;
    if (!DECIMAL.test(s)) {
      ctx.addIssue({ code: 'custom', message: 'must be a non-negative decimal such as "1500" or "0.25" (up to 18 digits before the point and 9 after, no exponent)' });
      return z.NEVER;
    }
    return canonicalDecimal(s);
  })
  .meta({ override: ({ jsonSchema }: { jsonSchema: Record<string, unknown> }) => void Object.assign(jsonSchema, { anyOf: undefined, type: 'string', pattern: DECIMAL.source, examples: ['1500', '0.25'] }) });

/** `"1.500"` → `"1.5"`, `"2.0"` → `"2"`. */
export function canonicalDecimal(s: string): string {
  if (!s.includes('.')) return s;
  const trimmed = s.replace(/0+$/, '');
  return trimmed.endsWith('.') ? trimmed.slice(0, -1) : trimmed;
}

