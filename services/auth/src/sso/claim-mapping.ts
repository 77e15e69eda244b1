import { ClaimMapping, emailSchema, isText, KeelError } from '@keel/contracts';

/** Who the identity provider says the user is, in Keel's terms. */
export interface MappedIdentity {
  /** The provider's stable id for the user (`sub`). */
  subject: string;
  email: string;
  /** The provider vouches that the user controls `email` (`email_verified`). */
  emailVerified: boolean;
  name: string;
  roles: string[];
  /** Roles on teams (team-scope grants). */
  teamRoles: TeamRole[];
}

export interface TeamRole {
  teamId: string;
  role: string;
}

/**
 * A claim by name. Names are tried as written first, since some providers use URLs as claim
 * names (`https://example.com/groups`); then as a dotted path into nested claims
 * (`realm_access.roles`).
 */
function claimAt(claims: Record<string, unknown>, name: string): unknown {
  if (name in claims) return claims[name];
  let value: unknown = claims;
  for (const part of name.split('.')) {
    if (!value || typeof value !== 'object') return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

/** A group claim's values: providers send an array of strings, or a single string. */
function valuesOf(claims: Record<string, unknown>, name: string | undefined): string[] {
  if (!name) return [];
  const value = claimAt(claims, name);
  if (typeof value === 'string') return [value];
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

function mapped<T>(values: string[], mapping: Record<string, T>): T[] {
  return values.flatMap((v) => (Object.hasOwn(mapping, v) ? [mapping[v]!] : []));
}

export const teamRoleKey = (t: TeamRole) => `${t.teamId}:${t.role}`;

const sortedUnique = (values: string[]) => [...new Set(values)].sort();

/** Turns verified claims into a Keel identity, or refuses the sign-in saying what the provider must send. */
export function mapClaims(claims: Record<string, unknown>, mapping: ClaimMapping): MappedIdentity {
  const subject = claims.sub;
  if (typeof subject !== 'string' || !subject || subject.length > 255 || !isText(subject)) {
    throw new KeelError('invalid_token', 'The identity provider sent no usable subject ("sub"); ask your administrator to check the provider.');
  }
  const email = emailSchema.safeParse(claimAt(claims, mapping.emailClaim));
  if (!email.success) {
    throw new KeelError('forbidden', `The identity provider sent no email address in the "${mapping.emailClaim}" claim; ask your administrator to release it to Keel.`);
  }
  // The provider's name as a Keel profile name holds it (no control characters, no half of a pair cut at 200), else the email.
  const claimedName = claimAt(claims, mapping.nameClaim);
  const name = typeof claimedName === 'string' ? claimedName.trim().slice(0, 200).replace(/[\uD800-\uDBFF]$/, '') : '';
  const groupRoles = sortedUnique(mapped(valuesOf(claims, mapping.roleClaim), mapping.roleMapping));
  const roles = groupRoles.length ? groupRoles : sortedUnique(mapping.defaultRoles);
  if (!roles.length) {
    throw new KeelError('forbidden', 'None of your groups at the identity provider gives access to Keel; ask your administrator to map one of them to a role.');
  }
  return {
    subject,
    email: email.data,
    emailVerified: claims.email_verified === true,
    name: name && isText(name) ? name : email.data,
    roles,
    teamRoles: [...new Map(mapped(valuesOf(claims, mapping.teamClaim), mapping.teamMapping).map((t) => [teamRoleKey(t), t])).values()],
  };
}
