import { z } from 'zod';
import { systemRoleNames } from './permissions';
import { recordKeyError, text } from './text';

/**
 * A tenant's identity provider. `type` selects the protocol and the shape of `config`; SAML
 * and LDAP join the unions below with their own config, sharing the claim mapping (a SAML
 * attribute or an LDAP group plays the part of a claim) and the app redirect URIs.
 */

/** A provider never makes platform administrators: only the tenant's own roles can be mapped. */
const mappableRoles = systemRoleNames.filter((role) => role !== 'platform_admin');
const mappableRole = z.enum(mappableRoles as [string, ...string[]]);

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

/** An absolute URL without a fragment, on https (http only on the loopback interface: development and tests). */
function isSecureUrl(value: string, { query }: { query: boolean }): boolean {
  if (!URL.canParse(value) || value.includes('#')) return false;
  const url = new URL(value);
  if (!query && url.search) return false;
  return url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname));
}

const claimName = text().min(1).max(200);
const groupName = text().min(1).max(256);

const oidcConfigSchema = z
  .object({
    /** Exactly as the provider's discovery document states it (`${issuer}/.well-known/openid-configuration`). */
    issuer: text().max(2048).refine((v) => isSecureUrl(v, { query: false }), 'must be an https URL without query or fragment (http only on localhost)'),
    clientId: text().min(1).max(255),
    /** Requested beyond `openid email profile`, e.g. `groups`. */
    scopes: z.array(text().regex(/^[\x21\x23-\x5B\x5D-\x7E]{1,100}$/, 'must be one OAuth scope token')).max(20).default([]),
  })
  .strict();
export type OidcConfig = z.infer<typeof oidcConfigSchema>;

export const claimMappingSchema = z
  .object({
    emailClaim: claimName.default('email'),
    nameClaim: claimName.default('name'),
    /** The claim listing the user's groups (a string or an array of strings), e.g. `groups`. */
    roleClaim: claimName.optional(),
    /** Group → Keel role. With `roleClaim` set, the user's roles follow the provider at every sign-in. */
    roleMapping: z.record(groupName, mappableRole, recordKeyError).default({}),
    /** The roles of a user none of whose groups is mapped; empty refuses such users. */
    defaultRoles: z.array(mappableRole).max(16).default(['viewer']),
    /** The claim whose groups `teamMapping` maps (often the same as `roleClaim`). */
    teamClaim: claimName.optional(),
    /**
     * Group → a role on a Keel team (and its sub-teams). These team-scope grants follow the
     * provider at every sign-in; grants made by hand are left alone.
     */
    teamMapping: z.record(groupName, z.object({ teamId: z.uuid(), role: mappableRole }).strict(), recordKeyError).default({}),
  })
  .strict()
  .refine((m) => m.roleClaim || !Object.keys(m.roleMapping).length, { path: ['roleClaim'], message: 'is needed when roleMapping is given' })
  .refine((m) => m.teamClaim || !Object.keys(m.teamMapping).length, { path: ['teamClaim'], message: 'is needed when teamMapping is given' });
export type ClaimMapping = z.infer<typeof claimMappingSchema>;

/** Where the callback may send the browser on with the tokens (exact match, against open redirects). */
const redirectUris = z
  .array(text().max(2048).refine((v) => isSecureUrl(v, { query: true }), 'must be an https URL without a fragment (http only on localhost)'))
  .max(20)
  .default([]);

const oidcProvider = z
  .object({
    type: z.literal('oidc'),
    name: text().trim().min(1).max(100),
    config: oidcConfigSchema,
    mapping: claimMappingSchema.prefault({}),
    redirectUris,
    clientSecret: text().min(1).max(2048),
  })
  .strict();

export const createIdentityProviderSchema = z.discriminatedUnion('type', [oidcProvider]);
export const updateIdentityProviderSchema = z.discriminatedUnion('type', [
  oidcProvider.extend({ clientSecret: oidcProvider.shape.clientSecret.optional().describe('Omit to keep the current secret') }),
]);
export type IdentityProviderInput = z.infer<typeof updateIdentityProviderSchema>;

/** As the API shows it: never the client secret. */
export interface IdentityProvider {
  id: string;
  tenantId: string;
  type: 'oidc';
  name: string;
  config: OidcConfig;
  mapping: ClaimMapping;
  redirectUris: string[];
  version: number;
  createdAt: string;
  updatedAt: string;
}

export const ssoEventTypes = {
  providerCreated: 'auth.identity_provider.created',
  providerUpdated: 'auth.identity_provider.updated',
  providerDeleted: 'auth.identity_provider.deleted',
  identityLinked: 'auth.external_identity.linked',
  signedIn: 'auth.external_identity.signed_in',
} as const;

/** Every role a provider's mapping can hand out (checked against what its author holds). */
export function rolesGrantedBy(mapping: ClaimMapping): string[] {
  return [...new Set([...Object.values(mapping.roleMapping), ...mapping.defaultRoles, ...Object.values(mapping.teamMapping).map((t) => t.role)])];
}
