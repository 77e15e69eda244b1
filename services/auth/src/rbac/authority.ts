import { KeelError } from '@keel/contracts';

/**
 * The rule "nobody grants what they do not hold", as pure functions (no I/O, no clock): the
 * services gather the facts (what the caller holds, the tenant's role catalog, the roles a user
 * holds by assignment) and the deciders (users/user.decider.ts, rbac/role.decider.ts) and the
 * grant decisions (rbac/role-assignment.rules.ts) apply them.
 *
 * Not a Decider itself: it has no state of its own and yields no events; it is a part of the
 * decisions of the aggregates that change access (users, roles, role assignments, identity
 * providers).
 */

/** What a caller holds: its permissions, or '*' (the platform operator, the system). */
export type Held = '*' | readonly string[];

/** A tenant's roles (system and custom) and the permissions each carries. */
export type Catalog = ReadonlyMap<string, readonly string[]>;

/** The union of the permissions of `roles`; every role must exist in the tenant. */
export function permissionsOf(catalog: Catalog, roles: Iterable<string>): Set<string> {
  const out = new Set<string>();
  for (const role of roles) {
    const permissions = catalog.get(role);
    if (!permissions) throw new KeelError('validation_failed', `No role "${role}" in this tenant.`, [{ field: 'roles', message: `unknown role "${role}"` }]);
    for (const p of permissions) out.add(p);
  }
  return out;
}

/** The permissions of `wanted` that `held` lacks, in the order asked (none for '*'). */
export function lacking(held: Held, wanted: Iterable<string>): string[] {
  if (held === '*') return [];
  const mine = new Set(held);
  return [...new Set(wanted)].filter((p) => !mine.has(p));
}

/** Nobody grants what they do not hold: every permission of `roles` must be the caller's. */
export function requireGrantable(held: Held, catalog: Catalog, roles: Iterable<string>): void {
  requireHoldsAll(held, permissionsOf(catalog, roles));
}

/** The caller must hold every one of `permissions` (those it grants, or those of whom it acts on). */
export function requireHoldsAll(held: Held, permissions: Iterable<string>): void {
  const missing = lacking(held, permissions);
  if (missing.length) throw new KeelError('forbidden', `You cannot grant permissions you do not hold: ${missing.join(', ')}.`);
}

/** A role someone defines cannot carry permissions they lack. */
export function requireDefinable(held: Held, permissions: readonly string[]): void {
  const missing = lacking(held, permissions);
  if (missing.length) throw new KeelError('forbidden', `A role cannot hold permissions you lack: ${missing.join(', ')}.`);
}
