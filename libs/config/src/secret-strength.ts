import { estimateGuessability } from './guessability';

/**
 * The start-up check of the operator's secrets outside development (KEEL_ENV=production, the
 * default): the operator's bearer token (KEEL_BOOTSTRAP_TOKEN) and the first administrator's
 * password (KEEL_ADMIN_PASSWORD) must be neither a placeholder left from a template (the
 * Kubernetes secret's `REPLACE-WITH-...`, `changeme`, `<your token>`, `example`, ...) nor easy to
 * guess, as zxcvbn-ts estimates it (common passwords, repetitions, sequences, keyboard walks,
 * dictionary words): a token needs at least 10^14 guesses (what a random 14+ character token has;
 * `openssl rand -base64 24` has far more), a password the strongest score (10^10 guesses or more).
 * The messages never hold the value.
 *
 * The estimator and its dictionaries are loaded only when a secret is checked (not in development
 * and tests, not in a process given neither secret).
 */

const PLACEHOLDER = /replace|change[-_ .]?(me|it|this)|placeholder|example|dummy|sample|your[-_ .]|<[^>]*>|\{\{|\$\{|todo|fixme|xxxx|\.\.\./i;

const MIN_TOKEN_GUESSES_LOG10 = 14;
const MIN_PASSWORD_SCORE = 4;

/** Why `value` is no fit secret of its `kind` outside development, or undefined when it is. */
export function secretProblem(value: string, kind: 'token' | 'password'): string | undefined {
  if (PLACEHOLDER.test(value)) return 'is a placeholder (a template\'s value, such as "REPLACE-WITH-..."): set a secret of your own';
  const result = estimateGuessability(value);
  if (kind === 'token' && result.guessesLog10 < MIN_TOKEN_GUESSES_LOG10) return 'is too easy to guess (low entropy): make one with `openssl rand -base64 24`';
  if (kind === 'password' && result.score < MIN_PASSWORD_SCORE) return 'is too easy to guess (a common password, a repetition, a sequence or dictionary words): use a long random one, e.g. `openssl rand -base64 18`';
  return undefined;
}
