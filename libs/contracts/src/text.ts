import { z } from 'zod';

/**
 * Text that a field can hold. Refused everywhere: NUL and the other C0 controls, DEL and the C1
 * controls, unpaired UTF-16 surrogates (not text at all: no UTF-8 can encode them, Postgres
 * refuses NUL and them), and Unicode noncharacters (U+FDD0–U+FDEF, U+FFFE and U+FFFF of every
 * plane). Line breaks (LF, CR, U+2028, U+2029) and tab only where `multiline` says so.
 */
export interface TextOptions {
  /** Multi-line free text (a description, a reason): tab, LF, CR, U+2028 and U+2029 are allowed. */
  multiline?: boolean;
}

export interface TextProblem {
  /** UTF-16 index of the offending code unit (as JavaScript counts). */
  index: number;
  /** The code point (for an unpaired surrogate, the surrogate itself). */
  codePoint: number;
  kind: 'control' | 'line_break' | 'surrogate' | 'noncharacter';
}

// A quick test for anything that may be a problem; the loop below decides exactly (a surrogate
// may be half of a well-formed pair, a line break may be allowed).
const SUSPECT = /[\u0000-\u001F\u007F-\u009F\u2028\u2029\uD800-\uDFFF\uFDD0-\uFDEF\uFFFE\uFFFF]/;

const LINE_BREAKS = new Set([0x09, 0x0a, 0x0d, 0x2028, 0x2029]);

/** The first character `value` must not hold, or null when it is acceptable text. */
export function textProblem(value: string, options: TextOptions = {}): TextProblem | null {
  const first = SUSPECT.exec(value);
  if (!first) return null;
  for (let i = first.index; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = i + 1 < value.length ? value.charCodeAt(i + 1) : 0;
      if (next < 0xdc00 || next > 0xdfff) return { index: i, codePoint: unit, kind: 'surrogate' };
      const codePoint = ((unit - 0xd800) << 10) + (next - 0xdc00) + 0x10000;
      if ((codePoint & 0xfffe) === 0xfffe) return { index: i, codePoint, kind: 'noncharacter' };
      i++;
      continue;
    }
    if (unit >= 0xdc00 && unit <= 0xdfff) return { index: i, codePoint: unit, kind: 'surrogate' };
    if (LINE_BREAKS.has(unit)) {
      if (!options.multiline) return { index: i, codePoint: unit, kind: 'line_break' };
      continue;
    }
    if (unit <= 0x1f || (unit >= 0x7f && unit <= 0x9f)) return { index: i, codePoint: unit, kind: 'control' };
    if ((unit >= 0xfdd0 && unit <= 0xfdef) || unit === 0xfffe || unit === 0xffff) return { index: i, codePoint: unit, kind: 'noncharacter' };
  }
  return null;
}

/**
 * `value` with every character `text()` would refuse replaced by U+FFFD: for text Keel writes itself
 * from what it was given (a parser's message quoting the input, a dead letter's payload), which must
 * fit a text column and an event body whatever the input held.
 */
export function storableText(value: string, options: TextOptions = {}): string {
  let out = value;
  for (let problem = textProblem(out, options); problem; problem = textProblem(out, options)) {
    const width = problem.codePoint > 0xffff ? 2 : 1;
    out = `${out.slice(0, problem.index)}\uFFFD${out.slice(problem.index + width)}`;
  }
  return out;
}

const hex = (codePoint: number) => `U+${codePoint.toString(16).toUpperCase().padStart(4, '0')}`;

const what: Record<TextProblem['kind'], string> = {
  control: 'must not contain control characters',
  line_break: 'must be a single line: no tab or line break',
  surrogate: 'must not contain an unpaired UTF-16 surrogate',
  noncharacter: 'must not contain Unicode noncharacters',
};

/** The validation message for a problem, e.g. "must not contain control characters (U+0000 at index 1)". */
export function textProblemMessage(problem: TextProblem): string {
  return `${what[problem.kind]} (${hex(problem.codePoint)} at index ${problem.index})`;
}

/** Whether `value` is acceptable text (see `text`). */
export function isText(value: string, options: TextOptions = {}): boolean {
  return textProblem(value, options) === null;
}

/**
 * A string that refuses what no field should hold (see `TextOptions`). Every string field of a
 * request starts from this, not from `z.string()`; chain `.trim()`, `.min()`, `.max()`, `.regex()`
 * on it as usual (the check runs first, on the string as sent, and stops further checks).
 */
export function text(options: TextOptions = {}): z.ZodString {
  return z.string().superRefine((value, ctx) => {
    const problem = textProblem(value, options);
    if (problem) ctx.addIssue({ code: 'custom', message: textProblemMessage(problem), input: value, continue: false });
  });
}

/** A single-line text field with no other rule. */
export const textSchema = text();
/** Multi-line free text (tab and line breaks allowed). */
export const multilineTextSchema = text({ multiline: true });

/**
 * For `z.record(key, …)`: an invalid key is reported under its own path with the key schema's
 * message, not zod's generic "Invalid key in record".
 */
export const recordKeyError = {
  error: (issue: { code?: string; issues?: { message: string }[] }) =>
    issue.code === 'invalid_key' && issue.issues?.[0] ? `key ${issue.issues[0].message}` : undefined,
};
