import { z } from 'zod';
import { isoTime } from './contract';
import { text } from './text';

/**
 * Security signals (issue 7, "denials and attacks are visible"): facts on the log like any other
 * event, so they land in the ledger, are audited and can be subscribed to (a SIEM bridge, the
 * console's alert list). Neither holds personal data: principals by id, no address.
 */
export const securityEventTypes = {
  /** Requests of one authenticated principal refused with 403 in one window at one gateway, counted. */
  accessDenied: 'security.access.denied',
  /** A rule's threshold was passed in a window (today: failed sign-ins of a tenant per minute). */
  alertRaised: 'security.alert.raised',
} as const;

/** The rules that raise `security.alert.raised`. */
export const securityAlertRules = ['failed_sign_ins'] as const;

const count = z.number().int().min(1);

export const securityEventSchemas = {
  [securityEventTypes.accessDenied]: z.object({
    principal: z.object({ kind: z.enum(['user', 'api_key', 'service', 'system']), id: text() }),
    /** The window the count covers: [windowStart, windowStart + windowSeconds). */
    windowStart: isoTime,
    windowSeconds: count,
    /** Refusals in the window; the first of a window is reported at once with 1, the rest when it closes. */
    count,
    /** The routes refused, as their templates (no ids, no query), most refused first; at most 20. */
    routes: z.array(z.object({ method: text(), route: text(), count })).max(20),
    /** The gateway replica that counted them (each replica reports its own). */
    gateway: text(),
  }),
  [securityEventTypes.alertRaised]: z.object({
    rule: z.enum(securityAlertRules),
    windowStart: isoTime,
    windowSeconds: count,
    /** The tenant's threshold in force, and what the window had when the alert was raised. */
    threshold: count,
    observed: count,
  }),
} satisfies Record<(typeof securityEventTypes)[keyof typeof securityEventTypes], z.ZodType>;
