import { estimateGuessability } from '@keel/config';
import { KeelError } from '@keel/contracts';

/**
 * Keel's password policy (the same for every tenant; tenant settings have no policy of their
 * own yet), after NIST SP 800-63B §3.1.1.2. A password is refused, with the rule it broke named
 * and never echoed, when it is:
 *
 * - `length`: shorter than 12 or longer than 256 characters;
 * - `email`: the account's email address or its local part, or contains either (case-insensitive;
 *   a local part shorter than 3 characters only counts whole);
 * - `name`: contains the user's name, or a word of 4+ letters of it (case-insensitive);
 * - `tenant`: contains the tenant's slug, or a word of 4+ letters of it;
 * - `guessable`: easy to guess: a common or breached password, a keyboard walk, a repetition
 *   (`aaaaaaaaaaaa`), a sequence, a date, a few dictionary words with l33t substitutions, or the
 *   words above disguised, as zxcvbn-ts estimates it with its common (passwords, keyboards) and
 *   English dictionaries: fewer than 10^8 guesses (score below 3) is refused.
 *
 * Pure (no I/O, no clock); the HTTP contract (`passwordSchema`) refuses the lengths at the edge
 * already; the user decider applies the whole policy to every password it records, whoever sends
 * it (the first administrator from the environment, a reset, a change).
 *
 * The cost on the sign-up path is bounded: the estimate reads the first 64 characters (64
 * characters that are not guessable are not guessable whatever follows) and caps l33t
 * substitutions, so the worst case is some tens of milliseconds, less than the Argon2id hash the
 * same request makes. The dictionaries are loaded once, on the first password checked.
 */
export const PASSWORD_POLICY = { minLength: 12, maxLength: 256, minScore: 3 } as const;

export type PasswordRule = 'length' | 'email' | 'name' | 'tenant' | 'guessable';

/** What a password is checked against besides itself: whose it is and in which tenant. */
export interface PasswordContext {
  email: string;
  name?: string;
  /** The tenant's slug (none on the platform). */
  tenantSlug?: string;
}

export interface PasswordProblem {
  rule: PasswordRule;
  /** The whole sentence (the problem's detail). */
  message: string;
  /** The field's message. */
  detail: string;
}

/** A text and its words of 4+ letters or digits, lower-cased: what a password must not contain. */
function contextWords(text: string | undefined, minWhole = 3): string[] {
  if (!text) return [];
  const whole = text.trim().toLowerCase();
  const words = whole.split(/[^\p{L}\p{N}]+/u).filter((w) => w.length >= 4);
  const joined = words.join('');
  return [...new Set([whole, joined, ...words])].filter((w) => w.length >= minWhole);
}

/** The first rule of the policy that `password` breaks, or undefined when it is allowed. */
export function passwordProblem(password: string, context: PasswordContext): PasswordProblem | undefined {
  const { minLength, maxLength, minScore } = PASSWORD_POLICY;
  if (password.length < minLength) return { rule: 'length', message: `The password must be at least ${minLength} characters.`, detail: `must be at least ${minLength} characters` };
  if (password.length > maxLength) return { rule: 'length', message: `The password must be at most ${maxLength} characters.`, detail: `must be at most ${maxLength} characters` };
  const lower = password.toLowerCase();
  const email = context.email.trim().toLowerCase();
  const local = email.split('@')[0] ?? '';
  if (lower === email || lower === local || lower.includes(email) || (local.length >= 3 && lower.includes(local))) {
    return { rule: 'email', message: 'The password must not be or contain the email address or its local part.', detail: 'must not contain the email address' };
  }
  const name = contextWords(context.name);
  if (name.some((w) => lower.includes(w))) return { rule: 'name', message: "The password must not contain the user's name.", detail: "must not contain the user's name" };
  const slug = contextWords(context.tenantSlug);
  if (slug.some((w) => lower.includes(w))) return { rule: 'tenant', message: "The password must not contain the tenant's slug.", detail: "must not contain the tenant's slug" };
  const result = estimateGuessability(password, [email, local, ...name, ...slug]);
  if (result.score < minScore) {
    // zxcvbn's warnings are fixed sentences ("This is a commonly used password."), never the password.
    const why = result.feedback.warning ? ` (${result.feedback.warning.replace(/\.$/, '')})` : '';
    return {
      rule: 'guessable',
      message: `The password is too easy to guess${why}: a common password, a repetition, a sequence or a keyboard pattern. Use a passphrase of several unrelated words.`,
      detail: 'is too easy to guess',
    };
  }
  return undefined;
}

/** Refuses a password the policy does not allow (validation_failed, on `field`, naming the rule). */
export function requirePasswordAllowed(password: string, context: PasswordContext, field = 'password'): void {
  const problem = passwordProblem(password, context);
  if (problem) throw new KeelError('validation_failed', problem.message, [{ field, message: problem.detail }]);
}
