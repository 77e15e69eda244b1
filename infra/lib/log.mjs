/** Console output of `npm start` itself, told apart from the services' JSON logs by a prefix. */
export const say = (message) => console.log(`[keel] ${message}`);
export const warn = (message) => console.error(`[keel] warning: ${message}`);

/** A problem the user can fix: printed as one sentence without a stack trace, exit code 1. */
export class UserError extends Error {}

/** A URL safe to print: the password is masked. */
export function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}
