import { ipAllowed, KeelError } from '@keel/contracts';

/** A tenant that lists allowed IP ranges takes sign-ins and refreshes only from them. */
export function requireAllowedNetwork(ip: string | undefined, ranges: readonly string[]): void {
  if (!ipAllowed(ip, ranges)) {
    throw new KeelError('forbidden', `Signing in from ${ip ?? 'an unknown address'} is not allowed by this tenant's IP ranges.`);
  }
}
