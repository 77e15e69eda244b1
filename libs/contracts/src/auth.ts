import { z } from 'zod';
import { queryInteger } from './validation';
import { jwkSetSchema, ledgerEntrySchema } from './audit';
import { command, commandMetaSchema, isoTime, jsonObject, listOf, pageOf, positionSchema, query, route, routeGroup, SameType, serviceContract } from './contract';
import { actorSchema, envelopeSchema } from './envelope';
import { allPermissions, permissions as P, systemRoleNames } from './permissions';
import { ssoEventSchemas, ssoRoutes, ssoRpc } from './sso';
import { text } from './text';
import { personal } from './personal';
import { authMetaSchema, clientSchema, tokenPairSchema } from './auth-shared';

export { authMetaSchema, clientSchema, tokenPairSchema };

export const AUTH_CONTEXT = 'auth';

export const emailSchema = text()
  .trim()
  .toLowerCase()
  .max(254)
  .pipe(z.email('must be an email address'));

/** Length ≥ 12 and not the email (checked where the email is known). */
export const passwordSchema = text().min(12, 'must be at least 12 characters').max(256);
/** A system role or one of the tenant's custom roles (checked by the auth service). */
export const roleNameSchema = text().regex(/^[a-z][a-z0-9_-]{1,62}$/, 'a role name: lowercase letters, digits, "_" or "-"');
export const customRoleSchema = z
  .object({
    name: roleNameSchema.refine((n) => !(systemRoleNames as string[]).includes(n), 'is the name of a system role'),
    description: text({ multiline: true }).max(500).default(''),
    permissions: z.array(z.enum(allPermissions as unknown as [string, ...string[]])).min(1).max(64),
  })
  .strict();
export const updateRoleSchema = customRoleSchema.omit({ name: true });
export const teamSchema = z.object({ name: text().trim().min(1).max(100), parentId: z.uuid().nullable().default(null) }).strict();
export const updateTeamSchema = z
  .object({ name: text().trim().min(1).max(100).optional(), parentId: z.uuid().nullable().optional() })
  .strict()
  .refine((v) => v.name !== undefined || v.parentId !== undefined, { message: 'name a field to change' });
/** A role granted at tenant scope (no team) or at team scope (that team and its sub-teams). */
export const roleAssignmentSchema = z.object({ userId: z.uuid(), role: roleNameSchema, teamId: z.uuid().optional() }).strict();
export const permissionSchema = z.enum(allPermissions as unknown as [string, ...string[]]);

export const createUserSchema = z
  .object({
    email: emailSchema,
    name: text().trim().min(1, 'must not be empty').max(200),
    password: passwordSchema.optional(),
    roles: z.array(roleNameSchema).max(16).default(['viewer']),
  })
  .strict();
export type CreateUser = z.infer<typeof createUserSchema>;

export const profileSchema = z.object({ name: text().trim().min(1, 'must not be empty').max(200) }).strict();
export const setRolesSchema = z.object({ roles: z.array(roleNameSchema).max(16) }).strict();
export const resetPasswordSchema = z.object({ password: passwordSchema }).strict();
export const changePasswordSchema = z.object({ currentPassword: text().min(1).max(256), newPassword: passwordSchema }).strict();

export const loginSchema = z
  .object({
    tenant: text().min(1).max(63).optional(),
    email: emailSchema,
    password: text().min(1).max(256),
    totp: text().regex(/^\d{6}$/, 'must be the 6-digit code from your authenticator').optional(),
    /** One of the account's single-use recovery codes, instead of `totp`. */
    recoveryCode: text().trim().min(10).max(32).regex(/^[A-Za-z0-9 -]+$/, 'must be a recovery code as shown at enrolment').optional(),
  })
  .strict()
  .refine((login) => !(login.totp && login.recoveryCode), { path: ['recoveryCode'], message: 'send either totp or recoveryCode, not both' });
export type LoginRequest = z.infer<typeof loginSchema>;

/** A current code from an authenticator app. */
export const totpCodeSchema = text().regex(/^\d{6}$/, 'must be the 6-digit code from your authenticator');

export const refreshSchema = z.object({ refreshToken: text().min(10).max(512) }).strict();

/** Proving who one is again, for a signed-in session: the password and, with a factor enrolled, a code. */
export const reauthenticateSchema = z
  .object({
    password: text().min(1).max(256),
    totp: text().regex(/^\d{6}$/, 'must be the 6-digit code from your authenticator').optional(),
    recoveryCode: text().trim().min(10).max(32).regex(/^[A-Za-z0-9 -]+$/, 'must be a recovery code as shown at enrolment').optional(),
  })
  .strict()
  .refine((r) => !(r.totp && r.recoveryCode), { path: ['recoveryCode'], message: 'send either totp or recoveryCode, not both' });

/** A new access token of the same session (the refresh token stays as it is). */
export const accessTokenSchema = z
  .object({ accessToken: text(), tokenType: z.literal('Bearer'), expiresIn: z.number().int(), authTime: isoTime.describe('when you last proved who you are (the token\'s auth_time)') })
  .meta({ id: 'AccessToken' });

export const createApiKeySchema = z
  .object({
    name: text().trim().min(1).max(100),
    permissions: z.array(permissionSchema).min(1).max(64),
    /** At most the tenant's `apiKeyMaxLifetimeDays` from now; without it, the key gets that maximum. */
    expiresAt: z.iso.datetime().optional().describe("at most the tenant's apiKeyMaxLifetimeDays (default 365) from now; omitted: that maximum"),
  })
  .strict();
/** Rotation: a new secret; the old one ends now, or after the grace period. */
export const rotateApiKeySchema = z
  .object({ gracePeriodSeconds: z.number().int().min(0).max(86_400).default(0).describe('how long the old secret keeps working (0: it ends now; at most a day)') })
  .strict();
export type CreateApiKey = z.infer<typeof createApiKeySchema>;

export interface User {
  id: string;
  tenantId: string;
  email: string;
  name: string;
  roles: string[];
  status: 'active' | 'disabled' | 'erased';
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface TokenPair {
  accessToken: string;
  refreshToken: string;
  tokenType: 'Bearer';
  expiresIn: number;
}

/** Claims of a Keel access token (JWT, EdDSA). */
export interface AccessClaims {
  sub: string;
  tid: string;
  sid: string;
  roles: string[];
  /** Effective tenant-scope permissions when the token was issued (custom roles included). */
  perms: string[];
  /** When the person last proved who they are (seconds since epoch): sign-in, SSO or re-authentication; a refresh keeps it. */
  auth_time: number;
  /** How (RFC 8176): `pwd`, `otp` and `mfa` with a second factor, `fed` for single sign-on. */
  amr: string[];
  iss: string;
  aud: string;
  iat: number;
  exp: number;
}

export interface ApiKeyInfo {
  id: string;
  tenantId: string;
  name: string;
  permissions: string[];
  expiresAt: string;
  createdBy: string;
  createdAt: string;
  revokedAt: string | null;
  /** When the key was last used, to within about a minute (recorded at most once a minute). */
  lastUsedAt: string | null;
  rotatedAt: string | null;
}

export interface SessionInfo {
  id: string;
  tenantId: string;
  userId: string;
  createdAt: string;
  lastUsedAt: string;
  expiresAt: string;
  revokedAt: string | null;
}

export const authEventTypes = {
  userCreated: 'auth.user.created',
  userDisabled: 'auth.user.disabled',
  userEnabled: 'auth.user.enabled',
  userRolesChanged: 'auth.user.roles_changed',
  userProfileUpdated: 'auth.user.profile_updated',
  userPasswordChanged: 'auth.user.password_changed',
  userLoginFailed: 'auth.user.login_failed',
  userLocked: 'auth.user.locked',
  userMfaEnrolmentStarted: 'auth.user.mfa_enrolment_started',
  userMfaEnrolled: 'auth.user.mfa_enrolled',
  userMfaRemoved: 'auth.user.mfa_removed',
  userRecoveryCodeUsed: 'auth.user.recovery_code_used',
  userMfaReset: 'auth.user.mfa_reset',
  userErased: 'auth.user.erased',
  sessionStarted: 'auth.session.started',
  sessionRevoked: 'auth.session.revoked',
  sessionRefreshed: 'auth.session.refreshed',
  sessionReauthenticated: 'auth.session.reauthenticated',
  apiKeyCreated: 'auth.api_key.created',
  apiKeyRevoked: 'auth.api_key.revoked',
  apiKeyRotated: 'auth.api_key.rotated',
  apiKeyUsed: 'auth.api_key.used',
  signingKeyRotated: 'auth.signing_key.rotated',
  roleCreated: 'auth.role.created',
  roleUpdated: 'auth.role.updated',
  roleDeleted: 'auth.role.deleted',
  teamCreated: 'auth.team.created',
  teamUpdated: 'auth.team.updated',
  teamDeleted: 'auth.team.deleted',
  roleGranted: 'auth.role_assignment.granted',
  roleRevoked: 'auth.role_assignment.revoked',
} as const;

/** Issuer and audience of Keel's tokens. */
export const TOKEN_ISSUER = 'keel';
export const TOKEN_AUDIENCE = 'keel-api';
export const ACCESS_TOKEN_SECONDS = 900;

/** Where a revoked session is kept (in Redis) for as long as its access tokens can live. */
export const revokedSessionKey = (prefix: string, sessionId: string) => `${prefix}revoked:session:${sessionId}`;
/**
 * When a user's access last changed (roles, a tenant-scope grant, disabled), in ms since epoch, kept
 * (in Redis) as long as a token issued before can live: gateways refuse such tokens.
 */
export const userChangedKey = (prefix: string, userId: string) => `${prefix}changed:user:${userId}`;
/** When a tenant's custom role last changed (its permissions, or deleted), in ms since epoch: tokens carrying it issued before are refused. */
export const roleChangedKey = (prefix: string, tenantId: string, role: string) => `${prefix}changed:role:${tenantId}:${role}`;

// ---- answers ----

export const userSchema = z
  .object({
    id: z.uuid(),
    tenantId: text(),
    email: text(),
    name: text(),
    roles: z.array(text()),
    status: z.enum(['active', 'disabled', 'erased']).describe('erased: the person was forgotten; their email and name read "[erased]"'),
    version: z.number().int(),
    createdAt: isoTime,
    updatedAt: isoTime,
  })
  .meta({ id: 'User' });
export const userCommandResultSchema = z.object({ state: userSchema, version: z.number().int(), position: positionSchema });
/** What the gateway answers to a user command: the user and the event's position. */
export const userAnswerSchema = userSchema.extend({ position: positionSchema }).meta({ id: 'UserCommandResult' });
export const userPageSchema = pageOf(userSchema).meta({ id: 'UserPage' });


export const sessionInfoSchema = z.object({
  id: z.uuid(), tenantId: text(), userId: z.uuid(), createdAt: isoTime, lastUsedAt: isoTime, expiresAt: isoTime, revokedAt: isoTime.nullable(),
});
export const sessionListSchema = listOf(sessionInfoSchema).meta({ id: 'SessionList' });

export const apiKeyInfoSchema = z
  .object({
    id: z.uuid(), tenantId: text(), name: text(), permissions: z.array(text()), expiresAt: isoTime, createdBy: text(), createdAt: isoTime, revokedAt: isoTime.nullable(),
    lastUsedAt: isoTime.nullable(), rotatedAt: isoTime.nullable(),
  })
  .meta({ id: 'ApiKey' });
export const createdApiKeySchema = apiKeyInfoSchema.extend({ secret: text().describe('shown once, never again'), position: positionSchema });
export const rotatedApiKeySchema = createdApiKeySchema.extend({ previousSecretValidUntil: isoTime.describe('when the old secret stops working') });
/** What the gateway learns of a presented key: the key, what it may do now (its permissions ∩ its creator's current ones) and until when this secret works. */
export const verifiedApiKeySchema = apiKeyInfoSchema.extend({ effectivePermissions: z.array(text()), validUntil: isoTime });
export type VerifiedApiKey = z.infer<typeof verifiedApiKeySchema>;
/** A user's access now, as a token issued now would carry it (for the gateway's check of a token issued around a change). */
export const currentAccessSchema = z.object({ active: z.boolean(), roles: z.array(text()), permissions: z.array(text()) });
/** A user's access now: what an access token issued now would carry (`qry.auth.current_access`). */
export type CurrentAccess = z.infer<typeof currentAccessSchema>;
export const apiKeyListSchema = listOf(apiKeyInfoSchema);

export const roleSchema = z.object({ name: text(), description: text({ multiline: true }).optional(), system: z.boolean(), permissions: z.array(text()) });
export const teamViewSchema = z.object({ id: z.uuid(), name: text(), parentId: z.uuid().nullable() });
export const roleAssignmentViewSchema = z.object({ id: z.uuid(), userId: z.uuid(), role: text(), teamId: z.uuid().nullable() });
export const permissionMatrixSchema = z
  .object({
    permissions: z.array(text()),
    roles: z.array(z.object({ name: text(), system: z.boolean(), permissions: z.array(text()) })),
    users: z.array(z.object({ id: z.uuid(), email: text(), scope: text().describe('"tenant" or a team id'), teamName: text().optional(), permissions: z.array(text()) })),
  })
  .meta({ id: 'PermissionMatrix' });
const deleted = z.object({ deleted: z.literal(true), position: positionSchema });

export const erasedUserSchema = z
  .object({ erased: z.literal(true), userId: z.uuid(), sessionsRevoked: z.number().int().min(0), position: positionSchema })
  .meta({ id: 'ErasedUser' });
export const subjectRefSchema = z.object({ tenantId: text().min(1).max(64), subjectId: text().min(1).max(200) }).strict();
/** A data key as its owner hands it out: sealed under the KEK (`key`, base64), or gone (`erased`), or never made (`absent`). */
export const wrappedSubjectKeySchema = z.union([
  z.object({ state: z.literal('key'), sealed: text() }),
  z.object({ state: z.enum(['erased', 'absent']) }),
]);
/** The export of one person (GDPR Art. 15 and 20): everything Keel holds about them, decrypted, as one JSON document. */
export const personalDataSchema = z
  .object({
    exportedAt: isoTime,
    subject: z.object({ tenantId: text(), userId: z.uuid() }),
    user: userSchema,
    sessions: z.array(sessionInfoSchema),
    roleAssignments: z.array(roleAssignmentViewSchema),
    mfa: z.object({ totp: z.enum(['none', 'pending', 'confirmed']), recoveryCodesLeft: z.number().int().min(0) }),
    externalIdentities: z.array(z.object({ providerId: z.uuid(), providerName: text().nullable(), subject: text(), linkedAt: isoTime, lastSignInAt: isoTime })),
    apiKeys: z.array(apiKeyInfoSchema),
    ledgerEntries: z.array(ledgerEntrySchema).describe('every ledger entry the person is actor or subject of, oldest first, personal fields decrypted'),
  })
  .meta({ id: 'PersonalData' });
const revoked = z.object({ revoked: z.literal(true), position: positionSchema });

// ---- commands and queries (the subjects the auth service serves) ----

const tenantScope = text().min(1).max(64);
const authCommand = <P extends z.ZodRawShape>(payload: P) => z.object({ meta: authMetaSchema, payload: z.object({ tenantId: tenantScope, ...payload }).strict() }).strict();
const signIn = <P extends z.ZodType>(payload: P) => z.object({ client: clientSchema, payload }).strict();
const A_ = AUTH_CONTEXT;

export const authRpc = {
  login: command(A_, 'login', { summary: 'Sign in with a password (and a second factor)', request: signIn(loginSchema), response: tokenPairSchema }),
  refresh: command(A_, 'refresh', { summary: 'Exchange a refresh token (rotated on every use)', request: signIn(refreshSchema), response: tokenPairSchema }),
  revokeSession: command(A_, 'revoke_session', {
    summary: 'Revoke a session (optionally only if it is that user\'s)',
    request: authCommand({ sessionId: z.uuid(), onlyOfUser: z.uuid().optional() }),
    response: z.object({ revoked: z.boolean() }),
  }),
  rotateSigningKey: command(A_, 'rotate_signing_key', { summary: 'Rotate the token signing key', request: z.object({ meta: authMetaSchema }).strict(), response: z.object({ kid: text(), position: positionSchema }) }),
  createUser: command(A_, 'create_user', { summary: 'Create a user', request: authCommand({ data: createUserSchema }), response: userCommandResultSchema }),
  setUserStatus: command(A_, 'set_user_status', { summary: 'Disable or enable a user', request: authCommand({ userId: z.uuid(), status: z.enum(['active', 'disabled']) }), response: userCommandResultSchema }),
  setUserRoles: command(A_, 'set_user_roles', { summary: "Set a user's roles", request: authCommand({ userId: z.uuid(), data: setRolesSchema }), response: userCommandResultSchema }),
  updateProfile: command(A_, 'update_profile', { summary: "Update a user's profile", request: authCommand({ userId: z.uuid(), data: profileSchema }), response: userCommandResultSchema }),
  resetPassword: command(A_, 'reset_password', { summary: "Reset a user's password", request: authCommand({ userId: z.uuid(), data: resetPasswordSchema }), response: userCommandResultSchema }),
  changePassword: command(A_, 'change_password', { summary: 'Change one\'s own password', request: authCommand({ userId: z.uuid(), data: changePasswordSchema }), response: userCommandResultSchema }),
  mfaTotpStart: command(A_, 'mfa_totp_start', { summary: 'Start TOTP enrolment', request: authCommand({ userId: z.uuid() }), response: z.object({ secret: text(), otpauthUrl: text() }) }),
  mfaTotpConfirm: command(A_, 'mfa_totp_confirm', { summary: 'Confirm TOTP enrolment', request: authCommand({ userId: z.uuid(), code: totpCodeSchema }), response: z.object({ recoveryCodes: z.array(text()) }) }),
  reauthenticate: command(A_, 'reauthenticate', {
    summary: 'Prove who one is again: a fresh auth_time for the current session',
    request: authCommand({ userId: z.uuid(), sessionId: z.uuid(), data: reauthenticateSchema }),
    response: accessTokenSchema,
  }),
  resetMfa: command(A_, 'reset_mfa', {
    summary: "Remove a user's second factor (an administrator, for a user who lost it); ends the user's sessions",
    request: authCommand({ userId: z.uuid() }),
    response: z.object({ reset: z.literal(true), sessionsRevoked: z.number().int().min(0), position: positionSchema }),
  }),
  eraseUser: command(A_, 'erase_user', {
    summary: 'Erase a person: destroy their data key, credentials, sessions and SSO links, free their email (one auth.user.erased event)',
    request: authCommand({ userId: z.uuid() }),
    response: erasedUserSchema,
  }),
  personalData: query(A_, 'personal_data', {
    summary: "What the auth service holds about a person (the export's profile, sessions, grants, factors, links and keys)",
    request: z.object({ tenantId: tenantScope, userId: z.uuid() }).strict(),
    response: personalDataSchema.omit({ ledgerEntries: true }),
  }),
  subjectKeys: command(A_, 'subject_keys', {
    summary: 'Data keys of data subjects, wrapped under the KEK (for sealing: create the missing ones)',
    request: z.object({ refs: z.array(subjectRefSchema).min(1).max(500), create: z.boolean() }).strict(),
    response: z.object({ keys: z.array(wrappedSubjectKeySchema) }),
  }),
  mfaTotpRemove: command(A_, 'mfa_totp_remove', { summary: 'Remove the TOTP factor', request: authCommand({ userId: z.uuid(), code: totpCodeSchema }), response: z.object({ removed: z.literal(true) }) }),
  createApiKey: command(A_, 'create_api_key', { summary: 'Create an API key', request: authCommand({ data: createApiKeySchema }), response: createdApiKeySchema }),
  rotateApiKey: command(A_, 'rotate_api_key', {
    summary: 'Issue a new secret for an API key (the old one ends now or after a grace period)',
    request: authCommand({ keyId: z.uuid(), data: rotateApiKeySchema }),
    response: rotatedApiKeySchema,
  }),
  revokeApiKey: command(A_, 'revoke_api_key', { summary: 'Revoke an API key', request: authCommand({ keyId: z.uuid() }), response: apiKeyInfoSchema.extend({ position: positionSchema }) }),
  createRole: command(A_, 'create_role', { summary: 'Create a custom role', request: authCommand({ data: customRoleSchema }), response: roleSchema.extend({ position: positionSchema }) }),
  updateRole: command(A_, 'update_role', { summary: 'Change a custom role', request: authCommand({ name: roleNameSchema, data: updateRoleSchema }), response: roleSchema.extend({ position: positionSchema }) }),
  deleteRole: command(A_, 'delete_role', { summary: 'Delete a custom role nobody holds', request: authCommand({ name: roleNameSchema }), response: deleted }),
  createTeam: command(A_, 'create_team', { summary: 'Create a team', request: authCommand({ data: teamSchema }), response: teamViewSchema.extend({ position: positionSchema }) }),
  updateTeam: command(A_, 'update_team', { summary: 'Rename or move a team', request: authCommand({ teamId: z.uuid(), data: updateTeamSchema }), response: teamViewSchema.extend({ position: positionSchema }) }),
  deleteTeam: command(A_, 'delete_team', { summary: 'Delete a team', request: authCommand({ teamId: z.uuid() }), response: deleted }),
  grantRole: command(A_, 'grant_role', { summary: 'Grant a role at tenant or team scope', request: authCommand({ data: roleAssignmentSchema }), response: roleAssignmentViewSchema.extend({ position: positionSchema }) }),
  revokeRoleAssignment: command(A_, 'revoke_role_assignment', { summary: 'Take a role assignment away', request: authCommand({ assignmentId: z.uuid() }), response: revoked }),
  user: query(A_, 'user', { summary: 'A user, as its log has it', request: z.object({ tenantId: tenantScope, userId: z.uuid() }).strict(), response: userSchema }),
  users: query(A_, 'users', {
    summary: 'Users of a tenant, a page at a time',
    request: z.object({ tenantId: tenantScope, cursor: z.uuid().optional(), limit: z.number().int().min(1).max(500).default(50) }).strict(),
    response: userPageSchema,
  }),
  sessions: query(A_, 'sessions', {
    summary: 'Sessions of a tenant (or of one user)',
    request: z.object({ tenantId: tenantScope, userId: z.uuid().optional(), activeOnly: z.boolean().default(true), limit: z.number().int().min(1).max(500).default(100) }).strict(),
    response: sessionListSchema,
  }),
  jwks: query(A_, 'jwks', { summary: 'Keys that verify access tokens', request: z.object({}).loose(), response: jwkSetSchema }),
  apiKeys: query(A_, 'api_keys', { summary: "A tenant's API keys (never their secrets)", request: z.object({ tenantId: tenantScope }).strict(), response: apiKeyListSchema }),
  verifyApiKey: query(A_, 'verify_api_key', { summary: 'Who a presented API key is (for the gateway)', request: z.object({ secret: text().min(1).max(200) }).strict(), response: verifiedApiKeySchema }),
  currentAccess: query(A_, 'current_access', {
    summary: "A user's status, tenant-scope roles and permissions now (for the gateway)",
    request: z.object({ tenantId: tenantScope, userId: z.uuid() }).strict(),
    response: currentAccessSchema,
  }),
  roles: query(A_, 'roles', { summary: 'System and custom roles', request: z.object({ tenantId: tenantScope }).strict(), response: listOf(roleSchema) }),
  teams: query(A_, 'teams', { summary: 'Teams', request: z.object({ tenantId: tenantScope }).strict(), response: listOf(teamViewSchema) }),
  roleAssignments: query(A_, 'role_assignments', { summary: 'Role assignments', request: z.object({ tenantId: tenantScope, userId: z.uuid().optional() }).strict(), response: listOf(roleAssignmentViewSchema) }),
  permissionMatrix: query(A_, 'permission_matrix', { summary: 'Roles × permissions and users × effective permissions', request: z.object({ tenantId: tenantScope }).strict(), response: permissionMatrixSchema }),
};

// ---- event bodies ----

const freeText = text({ multiline: true });
/** The body of every auth event type (see `tenantEventSchemas` for the rule on added fields). */
export const authEventSchemas = {
  [authEventTypes.userCreated]: z.object({ email: personal(text()), name: personal(text()), roles: z.array(text()) }),
  [authEventTypes.userDisabled]: z.object({}),
  [authEventTypes.userEnabled]: z.object({}),
  [authEventTypes.userRolesChanged]: z.object({ roles: z.array(text()) }),
  [authEventTypes.userProfileUpdated]: z.object({ name: personal(text()) }),
  [authEventTypes.userPasswordChanged]: z.object({ byAdmin: z.boolean() }),
  [authEventTypes.userLoginFailed]: z.object({ ip: personal(text()).optional() }),
  [authEventTypes.userLocked]: z.object({ until: isoTime }),
  [authEventTypes.userMfaEnrolmentStarted]: z.object({ method: z.literal('totp') }),
  [authEventTypes.userMfaEnrolled]: z.object({ method: z.literal('totp'), recoveryCodes: z.number().int().min(0) }),
  [authEventTypes.userMfaRemoved]: z.object({ method: z.literal('totp') }),
  [authEventTypes.userRecoveryCodeUsed]: z.object({ remaining: z.number().int().min(0) }),
  /** An administrator removed the user's factor (the actor is the administrator); `sessionsRevoked` of the user's sessions ended. */
  [authEventTypes.userMfaReset]: z.object({ method: z.literal('totp'), sessionsRevoked: z.number().int().min(0) }),
  /** The person was erased (their data key destroyed, credentials and sessions gone): no personal data, the actor is who erased them. */
  [authEventTypes.userErased]: z.object({}),
  /** `amr`: how the person proved who they are (RFC 8176); the session's auth_time is the event's time. */
  [authEventTypes.sessionStarted]: z.object({ userId: z.uuid(), amr: z.array(text()).optional() }),
  [authEventTypes.sessionReauthenticated]: z.object({ amr: z.array(text()) }),
  [authEventTypes.sessionRevoked]: z.object({ reason: text() }),
  [authEventTypes.sessionRefreshed]: z.object({}),
  [authEventTypes.apiKeyCreated]: z.object({ name: text(), permissions: z.array(text()), expiresAt: isoTime }),
  [authEventTypes.apiKeyRevoked]: z.object({}),
  [authEventTypes.apiKeyRotated]: z.object({ previousSecretValidUntil: isoTime }),
  /** Recorded at most once a minute per key. */
  [authEventTypes.apiKeyUsed]: z.object({ at: isoTime }),
  [authEventTypes.signingKeyRotated]: z.object({ kid: text(), retired: z.array(text()) }),
  [authEventTypes.roleCreated]: z.object({ description: freeText, permissions: z.array(text()) }),
  [authEventTypes.roleUpdated]: z.object({ description: freeText, permissions: z.array(text()) }),
  [authEventTypes.roleDeleted]: z.object({}),
  [authEventTypes.teamCreated]: z.object({ name: text(), parentId: z.uuid().nullable() }),
  [authEventTypes.teamUpdated]: z.object({ name: text(), parentId: z.uuid().nullable() }),
  [authEventTypes.teamDeleted]: z.object({}),
  [authEventTypes.roleGranted]: z.object({ userId: z.uuid(), role: text(), teamId: z.uuid().optional() }),
  /** Whose grant it was (optional: events written before carry none). */
  [authEventTypes.roleRevoked]: z.object({ userId: z.uuid().optional(), role: text().optional(), teamId: z.uuid().optional() }),
} satisfies Record<(typeof authEventTypes)[keyof typeof authEventTypes], z.ZodType>;

// ---- HTTP routes ----

const noContent = { status: 204, schema: null } as const;
const me = { permission: 'authenticated', tag: 'auth' } as const;
const totpCodeBody = z.object({ code: totpCodeSchema }).strict();

/** Signing in and what a signed-in caller does for themselves: `/api/v1/auth/…`, and the token keys. */
export const authRoutes = routeGroup({
  login: route({
    method: 'POST', path: '/api/v1/auth/login', permission: 'public', tag: 'auth', summary: 'Sign in (tenant slug; omit it for platform users) → access and refresh tokens',
    body: loginSchema, response: { status: 200, schema: tokenPairSchema },
  }),
  refresh: route({
    method: 'POST', path: '/api/v1/auth/refresh', permission: 'public', tag: 'auth', summary: 'Exchange a refresh token (rotated on every use; reuse revokes the session)',
    body: refreshSchema, response: { status: 200, schema: tokenPairSchema },
  }),
  logout: route({ ...me, method: 'POST', path: '/api/v1/auth/logout', summary: 'Sign out: revoke this session', response: noContent }),
  changePassword: route({ ...me, stepUp: true, method: 'POST', path: '/api/v1/auth/password', summary: 'Change your own password (needs a recent sign-in)', body: changePasswordSchema, response: noContent }),
  reauthenticate: route({
    ...me, method: 'POST', path: '/api/v1/auth/reauthenticate',
    summary: 'Prove who you are again (password, and a code when you have a second factor) → an access token with a fresh auth_time, for routes that need a recent sign-in',
    body: reauthenticateSchema, response: { status: 200, schema: accessTokenSchema },
  }),
  startTotp: route({
    ...me, stepUp: true, method: 'POST', path: '/api/v1/auth/mfa/totp', summary: 'Start TOTP enrolment: a new secret and otpauth:// URL for your authenticator app (confirm it with a code; needs a recent sign-in)',
    response: { status: 201, schema: authRpc.mfaTotpStart.response },
  }),
  confirmTotp: route({
    ...me, stepUp: true, method: 'POST', path: '/api/v1/auth/mfa/totp/verify', summary: 'Confirm TOTP enrolment with a current code → 10 single-use recovery codes (shown once; needs a recent sign-in)',
    body: totpCodeBody, response: { status: 200, schema: authRpc.mfaTotpConfirm.response },
  }),
  removeTotp: route({ ...me, stepUp: true, method: 'DELETE', path: '/api/v1/auth/mfa/totp', summary: 'Remove your TOTP factor and its recovery codes (needs a current code and a recent sign-in)', body: totpCodeBody, response: noContent }),
  updateProfile: route({ ...me, method: 'PATCH', path: '/api/v1/auth/profile', summary: 'Update your own profile', body: profileSchema, response: { status: 200, schema: userAnswerSchema } }),
  mySessions: route({ ...me, method: 'GET', path: '/api/v1/auth/sessions', summary: 'Your own active sessions', response: { status: 200, schema: sessionListSchema } }),
  revokeMine: route({
    ...me, method: 'DELETE', path: '/api/v1/auth/sessions/{sessionId}', summary: 'Revoke one of your own sessions',
    params: z.object({ sessionId: z.uuid() }).strict(), response: noContent,
  }),
  jwks: route({
    method: 'GET', path: '/.well-known/jwks.json', permission: 'public', tag: 'auth', summary: 'Keys that verify Keel access tokens (JWK set, EdDSA)',
    response: { status: 200, schema: jwkSetSchema },
  }),
  discovery: route({
    method: 'GET', path: '/.well-known/openid-configuration', permission: 'public', tag: 'auth', summary: 'Discovery document for standard OIDC/JOSE libraries',
    response: { status: 200, schema: jsonObject.describe('OpenID Provider Metadata') },
  }),
  rotate: route({
    method: 'POST', path: '/api/v1/admin/signing-keys/rotate', permission: P.platformOperate, tag: 'operations',
    summary: 'Rotate the token signing key (the old one stays published until its tokens expire)', response: { status: 200, schema: authRpc.rotateSigningKey.response },
  }),
});

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const userParams = tenantParams.extend({ userId: z.uuid() }).strict();
const inTenant = { tenantParam: 'tenantId' } as const;

/** Users, API keys and sessions of one tenant: `/api/v1/tenants/{tenantId}/…`. */
export const tenantIdentityRoutes = routeGroup({
  createUser: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/users', permission: P.usersWrite, tag: 'users', summary: 'Create a user (email unique in the tenant; the plan caps the number)',
    params: tenantParams, body: createUserSchema, idempotent: true, response: { status: 201, schema: userAnswerSchema },
  }),
  listUsers: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/users', permission: P.usersRead, tag: 'users', summary: 'List users', params: tenantParams,
    query: z.object({ cursor: z.uuid().optional(), limit: queryInteger({ min: 1, max: 500 }).default(50) }).strict(),
    response: { status: 200, schema: userPageSchema },
  }),
  getUser: route({ ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/users/{userId}', permission: P.usersRead, tag: 'users', summary: 'Get a user', params: userParams, response: { status: 200, schema: userSchema } }),
  updateProfile: route({
    ...inTenant, method: 'PATCH', path: '/api/v1/tenants/{tenantId}/users/{userId}', permission: P.usersWrite, tag: 'users', summary: "Update a user's profile",
    params: userParams, body: profileSchema, response: { status: 200, schema: userAnswerSchema },
  }),
  setStatus: route({
    ...inTenant, method: 'PATCH', path: '/api/v1/tenants/{tenantId}/users/{userId}/status', permission: P.usersWrite, tag: 'users', summary: 'Disable (revokes every session) or enable a user',
    params: userParams, body: z.object({ status: z.enum(['active', 'disabled']) }).strict(), response: { status: 200, schema: userAnswerSchema },
  }),
  setRoles: route({
    ...inTenant, method: 'PUT', path: '/api/v1/tenants/{tenantId}/users/{userId}/roles', permission: P.rolesWrite, tag: 'users', summary: "Set a user's roles (only roles whose permissions you hold)",
    params: userParams, body: setRolesSchema, response: { status: 200, schema: userAnswerSchema },
  }),
  resetPassword: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/users/{userId}/password', permission: P.usersWrite, tag: 'users', summary: "Reset a user's password (revokes every session)",
    params: userParams, body: resetPasswordSchema, response: noContent,
  }),
  resetMfa: route({
    forward: { rpc: authRpc.resetMfa, withPermissions: true },
    ...inTenant, stepUp: true, method: 'POST', path: '/api/v1/tenants/{tenantId}/users/{userId}/mfa/reset', permission: P.usersResetMfa, tag: 'users',
    summary: "Remove a user's second factor and recovery codes, for a user who lost them (ends every session of the user; they sign in with the password and may enrol again)",
    params: userParams, response: { status: 200, schema: authRpc.resetMfa.response },
  }),
  exportPersonalData: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/users/{userId}/personal-data', permission: P.usersExportPersonalData, tag: 'users',
    summary: 'Everything Keel holds about a person, decrypted, as one JSON document (profile, sessions, grants, second factor, SSO links, API keys, every ledger entry they are actor or subject of)',
    params: userParams, response: { status: 200, schema: personalDataSchema },
  }),
  eraseUser: route({
    forward: { rpc: authRpc.eraseUser, withPermissions: true },
    ...inTenant, stepUp: true, method: 'POST', path: '/api/v1/tenants/{tenantId}/users/{userId}/erase', permission: P.usersErase, tag: 'users',
    summary: 'Erase a person (final; needs a recent sign-in): their data key is destroyed, so their personal data reads "[erased]" everywhere, ledger included, while the ledger still verifies; credentials, sessions and SSO links go, and the email is free again',
    params: userParams, response: { status: 200, schema: erasedUserSchema },
  }),
  createKey: route({
    ...inTenant, stepUp: true, method: 'POST', path: '/api/v1/tenants/{tenantId}/api-keys', permission: P.apiKeysWrite, tag: 'api-keys', summary: 'Create an API key (permissions ⊆ yours; needs a recent sign-in); the secret is shown once',
    params: tenantParams, body: createApiKeySchema, response: { status: 201, schema: createdApiKeySchema },
  }),
  listKeys: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/api-keys', permission: P.apiKeysRead, tag: 'api-keys', summary: 'List API keys (never their secrets)',
    params: tenantParams, response: { status: 200, schema: apiKeyListSchema },
  }),
  revokeKey: route({
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/api-keys/{keyId}', permission: P.apiKeysWrite, tag: 'api-keys', summary: 'Revoke an API key (refused everywhere within a second)',
    params: tenantParams.extend({ keyId: z.uuid() }).strict(), response: { status: 200, schema: authRpc.revokeApiKey.response },
  }),
  rotateKey: route({
    ...inTenant, stepUp: true, method: 'POST', path: '/api/v1/tenants/{tenantId}/api-keys/{keyId}/rotate', permission: P.apiKeysWrite, tag: 'api-keys',
    summary: "Issue a new secret for an API key (you must hold its permissions; needs a recent sign-in); the old secret ends now, or after gracePeriodSeconds",
    params: tenantParams.extend({ keyId: z.uuid() }).strict(), body: rotateApiKeySchema, response: { status: 200, schema: rotatedApiKeySchema },
  }),
  listSessions: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/sessions', permission: P.sessionsRead, tag: 'sessions', summary: 'Active sessions in the tenant',
    params: tenantParams, query: z.object({ userId: z.uuid().optional() }).strict(), response: { status: 200, schema: sessionListSchema },
  }),
  revokeSession: route({
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/sessions/{sessionId}', permission: P.sessionsRevoke, tag: 'sessions', summary: 'Revoke a session (its tokens are refused within a second)',
    params: tenantParams.extend({ sessionId: z.uuid() }).strict(), response: noContent,
  }),
});

const roleParams = tenantParams.extend({ name: roleNameSchema }).strict();
const teamParams = tenantParams.extend({ teamId: z.uuid() }).strict();

/** Roles, teams, role assignments and the permission matrix of one tenant. */
export const rbacRoutes = routeGroup({
  roles: route({ forward: { rpc: authRpc.roles }, ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/roles', permission: P.rolesRead, tag: 'roles', summary: 'System and custom roles with their permissions', params: tenantParams, response: { status: 200, schema: listOf(roleSchema) } }),
  createRole: route({ forward: { rpc: authRpc.createRole, withPermissions: true },
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/roles', permission: P.rolesWrite, tag: 'roles', summary: 'Create a custom role (only permissions you hold)',
    params: tenantParams, body: customRoleSchema, response: { status: 201, schema: authRpc.createRole.response },
  }),
  updateRole: route({ forward: { rpc: authRpc.updateRole, withPermissions: true },
    ...inTenant, method: 'PUT', path: '/api/v1/tenants/{tenantId}/roles/{name}', permission: P.rolesWrite, tag: 'roles', summary: 'Change a custom role',
    params: roleParams, body: updateRoleSchema, response: { status: 200, schema: authRpc.updateRole.response },
  }),
  deleteRole: route({ forward: { rpc: authRpc.deleteRole, withPermissions: true }, ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/roles/{name}', permission: P.rolesWrite, tag: 'roles', summary: 'Delete a custom role nobody holds', params: roleParams, response: { status: 200, schema: deleted } }),
  teams: route({ forward: { rpc: authRpc.teams }, ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/teams', permission: P.usersRead, tag: 'teams', summary: 'Teams (each with its optional parent)', params: tenantParams, response: { status: 200, schema: listOf(teamViewSchema) } }),
  createTeam: route({ forward: { rpc: authRpc.createTeam, withPermissions: true },
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/teams', permission: P.usersWrite, tag: 'teams', summary: 'Create a team, optionally below another',
    params: tenantParams, body: teamSchema, response: { status: 201, schema: authRpc.createTeam.response },
  }),
  updateTeam: route({ forward: { rpc: authRpc.updateTeam, withPermissions: true },
    ...inTenant, method: 'PATCH', path: '/api/v1/tenants/{tenantId}/teams/{teamId}', permission: P.usersWrite, tag: 'teams', summary: 'Rename or move a team (never below itself)',
    params: teamParams, body: updateTeamSchema, response: { status: 200, schema: authRpc.updateTeam.response },
  }),
  deleteTeam: route({ forward: { rpc: authRpc.deleteTeam, withPermissions: true }, ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/teams/{teamId}', permission: P.usersWrite, tag: 'teams', summary: 'Delete a team without sub-teams or assignments', params: teamParams, response: { status: 200, schema: deleted } }),
  assignments: route({ forward: { rpc: authRpc.roleAssignments },
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/role-assignments', permission: P.rolesRead, tag: 'roles', summary: 'Role assignments (tenant or team scope)',
    params: tenantParams, query: z.object({ userId: z.uuid().optional() }).strict(), response: { status: 200, schema: listOf(roleAssignmentViewSchema) },
  }),
  grant: route({ forward: { rpc: authRpc.grantRole, withPermissions: true },
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/role-assignments', permission: P.rolesWrite, tag: 'roles', summary: 'Grant a role at tenant scope, or at a team (and its sub-teams)',
    params: tenantParams, body: roleAssignmentSchema, response: { status: 201, schema: authRpc.grantRole.response },
  }),
  revoke: route({ forward: { rpc: authRpc.revokeRoleAssignment, withPermissions: true },
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/role-assignments/{assignmentId}', permission: P.rolesWrite, tag: 'roles', summary: 'Take a role assignment away',
    params: tenantParams.extend({ assignmentId: z.uuid() }).strict(), response: { status: 200, schema: revoked },
  }),
  matrix: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/permission-matrix', permission: P.rolesRead, tag: 'roles',
    summary: 'Roles × permissions and users × effective permissions (format=csv for a spreadsheet)',
    params: tenantParams, query: z.object({ format: z.enum(['json', 'csv']).default('json') }).strict(),
    response: { status: 200, schema: permissionMatrixSchema, description: 'The matrix; with format=csv, text/csv with a row per role and per user scope' },
  }),
});

// The interfaces callers use and the schemas the documents show cannot drift apart (checked by tsc).
const answersMatch: [
  SameType<z.output<typeof userSchema>, User>,
  SameType<z.output<typeof tokenPairSchema>, TokenPair>,
  SameType<z.output<typeof apiKeyInfoSchema>, ApiKeyInfo>,
  SameType<z.output<typeof sessionInfoSchema>, SessionInfo>,
] = [true, true, true, true];
void answersMatch;

/** The auth service's contract: identity, roles and teams, and SSO (declared in sso.ts). */
export const authContract = serviceContract({
  service: 'auth',
  routes: { auth: authRoutes, tenantIdentity: tenantIdentityRoutes, rbac: rbacRoutes, sso: ssoRoutes },
  rpcs: { ...authRpc, ...ssoRpc },
  events: { ...authEventSchemas, ...ssoEventSchemas },
  projections: 'dead-letters',
});
