import { z } from 'zod';
import { tokenPairSchema, authMetaSchema, clientSchema } from './auth-shared';
import { command, isoTime, listOf, positionSchema, query, route, routeGroup, SameType } from './contract';
import { permissions as P, systemRoleNames } from './permissions';
import { slugSchema } from './tenant';
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

const endpointUrl = text().max(2048).refine((v) => isSecureUrl(v, { query: true }), 'must be an https URL without a fragment (http only on localhost)');
const claimName = text().min(1).max(200);
const groupName = text().min(1).max(256);

const oidcConfigSchema = z
  .object({
    /** Exactly as the provider's discovery document states it (`${issuer}/.well-known/openid-configuration`). */
    issuer: text().max(2048).refine((v) => isSecureUrl(v, { query: false }), 'must be an https URL without query or fragment (http only on localhost)'),
    clientId: text().min(1).max(255),
    /** Requested beyond `openid email profile`, e.g. `groups`. */
    scopes: z.array(text().regex(/^[\x21\x23-\x5B\x5D-\x7E]{1,100}$/, 'must be one OAuth scope token')).max(20).default([]),
    /**
     * Endpoints used instead of the discovery document's. A discovered endpoint on another
     * origin than the issuer's is refused unless it is named here (e.g. Google's token endpoint
     * is on oauth2.googleapis.com): the client secret goes only where its owner said.
     */
    endpoints: z
      .object({
        authorization: endpointUrl,
        token: endpointUrl,
        jwks: endpointUrl,
        userinfo: endpointUrl,
      })
      .partial()
      .strict()
      .optional(),
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

// ---- answers ----

export const identityProviderSchema = z
  .object({
    id: z.uuid(),
    tenantId: text(),
    type: z.literal('oidc'),
    name: text(),
    config: z.object({ issuer: text(), clientId: text(), scopes: z.array(text()) }),
    mapping: z.object({
      emailClaim: text(), nameClaim: text(), roleClaim: text().optional(), roleMapping: z.record(text(), text()), defaultRoles: z.array(text()),
      teamClaim: text().optional(), teamMapping: z.record(text(), z.object({ teamId: z.uuid(), role: text() })),
    }),
    redirectUris: z.array(text()),
    version: z.number().int(),
    createdAt: isoTime,
    updatedAt: isoTime,
  })
  .meta({ id: 'IdentityProvider' });
export const identityProviderResultSchema = z.object({ state: identityProviderSchema, version: z.number().int(), position: positionSchema });
export const identityProviderAnswerSchema = identityProviderSchema.extend({ position: positionSchema });

// ---- commands and queries ----

const providerRef = { tenantId: z.uuid(), providerId: z.uuid() };
const ssoCommand = <S extends z.ZodRawShape>(shape: S) => z.object({ meta: authMetaSchema, payload: z.object(shape).strict() }).strict();

/** An absolute URL of at most 2,048 characters (callbacks and redirects). */
const absoluteUrl = text().max(2048).pipe(z.url());

export const ssoRpc = {
  createIdentityProvider: command('auth', 'create_identity_provider', {
    summary: 'Add an identity provider', request: ssoCommand({ tenantId: z.uuid(), data: createIdentityProviderSchema }), response: identityProviderResultSchema,
  }),
  updateIdentityProvider: command('auth', 'update_identity_provider', {
    summary: "Replace an identity provider's settings", request: ssoCommand({ ...providerRef, data: updateIdentityProviderSchema }), response: identityProviderResultSchema,
  }),
  deleteIdentityProvider: command('auth', 'delete_identity_provider', { summary: 'Delete an identity provider', request: ssoCommand(providerRef), response: z.object({ position: positionSchema }) }),
  identityProvider: query('auth', 'identity_provider', { summary: 'An identity provider (never its secret)', request: z.object(providerRef).strict(), response: identityProviderSchema }),
  identityProviders: query('auth', 'identity_providers', { summary: "A tenant's identity providers", request: z.object({ tenantId: z.uuid() }).strict(), response: listOf(identityProviderSchema) }),
  startSso: command('auth', 'start_sso', {
    summary: 'Start an OpenID Connect sign-in: the URL to send the browser to',
    request: z
      .object({
        client: clientSchema,
        payload: z
          .object({
            tenant: slugSchema,
            providerId: z.uuid(),
            callbackUrl: absoluteUrl,
            browserBinding: text().min(32).max(128),
            redirectUri: absoluteUrl.optional(),
          })
          .strict(),
      })
      .strict(),
    response: z.object({ authorizationUrl: text() }),
    timeoutMs: 10_000,
  }),
  completeSso: command('auth', 'complete_sso', {
    summary: "Complete a sign-in with the provider's callback",
    request: z
      .object({
        client: clientSchema,
        payload: z
          .object({
            state: text().min(1).max(128),
            browserBinding: text().max(128).optional(),
            code: text().min(1).max(4096).optional(),
            error: text().max(256).optional(),
            errorDescription: text({ multiline: true }).max(1024).optional(),
            iss: text().max(2048).optional(),
          })
          .strict(),
      })
      .strict(),
    response: z.object({ tokens: tokenPairSchema, redirectUri: text().optional() }),
    timeoutMs: 20_000,
  }),
};

// ---- event bodies ----

const providerSettings = z.object({
  type: z.literal('oidc'),
  name: text(),
  config: identityProviderSchema.shape.config,
  mapping: identityProviderSchema.shape.mapping,
  redirectUris: z.array(text()),
});
const teamRole = z.object({ teamId: z.uuid(), role: text() });

export const ssoEventSchemas = {
  [ssoEventTypes.providerCreated]: providerSettings,
  [ssoEventTypes.providerUpdated]: providerSettings.extend({ clientSecretChanged: z.boolean() }),
  [ssoEventTypes.providerDeleted]: z.object({ name: text() }),
  [ssoEventTypes.identityLinked]: z.object({ providerId: z.uuid(), userId: z.uuid(), provisioned: z.boolean() }),
  [ssoEventTypes.signedIn]: z.object({ providerId: z.uuid(), userId: z.uuid(), roles: z.array(text()), teamRoles: z.array(teamRole) }),
} satisfies Record<(typeof ssoEventTypes)[keyof typeof ssoEventTypes], z.ZodType>;

// ---- HTTP routes ----

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const providerParams = tenantParams.extend({ providerId: z.uuid() }).strict();
const providers = { tenantParam: 'tenantId', tag: 'identity-providers' } as const;

/** Single sign-on: a tenant's identity providers, and the OpenID Connect sign-in through them. */
export const ssoRoutes = routeGroup({
  create: route({
    ...providers, method: 'POST', path: '/api/v1/tenants/{tenantId}/identity-providers', permission: P.usersWrite,
    summary: 'Add an identity provider (OpenID Connect); its roles must be ones you hold', params: tenantParams, body: createIdentityProviderSchema,
    response: { status: 201, schema: identityProviderAnswerSchema },
  }),
  list: route({
    ...providers, method: 'GET', path: '/api/v1/tenants/{tenantId}/identity-providers', permission: P.usersRead, summary: 'List identity providers (never their secrets)',
    params: tenantParams, response: { status: 200, schema: listOf(identityProviderSchema) },
  }),
  get: route({
    ...providers, method: 'GET', path: '/api/v1/tenants/{tenantId}/identity-providers/{providerId}', permission: P.usersRead, summary: 'Get an identity provider (never its secret)',
    params: providerParams, response: { status: 200, schema: identityProviderSchema },
  }),
  update: route({
    ...providers, method: 'PUT', path: '/api/v1/tenants/{tenantId}/identity-providers/{providerId}', permission: P.usersWrite,
    summary: "Replace an identity provider's settings (omit clientSecret to keep it)", params: providerParams, body: updateIdentityProviderSchema, conditional: true,
    response: { status: 200, schema: identityProviderAnswerSchema },
  }),
  remove: route({
    ...providers, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/identity-providers/{providerId}', permission: P.usersWrite,
    summary: 'Delete an identity provider (its users stay, unlinked)', params: providerParams, response: { status: 204, schema: null },
  }),
  start: route({
    method: 'GET', path: '/api/v1/auth/sso/{tenantSlug}/{providerId}/start', permission: 'public', tag: 'auth',
    summary: 'Start single sign-on: 302 to the identity provider (authorization code + PKCE)',
    params: z.object({ tenantSlug: slugSchema, providerId: z.uuid() }).strict(),
    query: z.object({ redirectUri: text().max(2048).pipe(z.url()).optional().describe("Send the browser there with the tokens in the fragment; one of the provider's redirectUris") }).strict(),
    response: { status: 302, schema: null, description: 'To the identity provider' },
  }),
  callback: route({
    method: 'GET', path: '/api/v1/auth/sso/callback', permission: 'public', tag: 'auth',
    summary: "Single sign-on callback → access and refresh tokens (or 302 to the start's redirectUri, tokens in the fragment)",
    // Not strict: providers add their own parameters to the callback (session_state, …).
    query: z
      .object({
        state: text().min(1).max(128),
        code: text().min(1).max(4096).optional(),
        error: text().max(256).optional(),
        error_description: text({ multiline: true }).max(1024).optional(),
        iss: text().max(2048).optional(),
      })
      .loose(),
    response: { status: 200, schema: tokenPairSchema },
  }),
});

// The interface callers use and the schema the documents show cannot drift apart (checked by tsc).
const identityProviderMatches: SameType<z.output<typeof identityProviderSchema>, IdentityProvider> = true;
void identityProviderMatches;
