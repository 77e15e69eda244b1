import { KeelError } from '@keel/contracts';

/**
 * Keel's password policy (the same for every tenant; tenant settings have no policy of their
 * own yet): at least 12 and at most 256 characters, and not the account's email address nor its
 * local part. The HTTP contract (`passwordSchema`) refuses the lengths at the edge already; the
 * user decider applies the whole policy to every password it records, whoever sends it (the
 * first administrator from the environment, a reset, a change).
 */
export const PASSWORD_POLICY = { minLength: 12, maxLength: 256 } as const;

/** Refuses a password the policy does not allow for the account with `email` (validation_failed, field "password"). */
export function requirePasswordAllowed(password: string, email: string, field = 'password'): void {
  const refuse = (message: string, detail: string): never => {
    throw new KeelError('validation_failed', message, [{ field, message: detail }]);
  };
  if (password.length < PASSWORD_POLICY.minLength) refuse(`The password must be at least ${PASSWORD_POLICY.minLength} characters.`, `must be at least ${PASSWORD_POLICY.minLength} characters`);
  if (password.length > PASSWORD_POLICY.maxLength) refuse(`The password must be at most ${PASSWORD_POLICY.maxLength} characters.`, `must be at most ${PASSWORD_POLICY.maxLength} characters`);
  const lower = password.toLowerCase();
  const mail = email.toLowerCase();
  if (lower === mail || lower === mail.split('@')[0]) refuse('The password must not be the email address.', 'must not be the email address');
}
