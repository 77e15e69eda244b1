import { z } from 'zod';
import { allPermissions, systemRoleNames } from './permissions';
import { text } from './text';

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

export const refreshSchema = z.object({ refreshToken: text().min(10).max(512) }).strict();

export const createApiKeySchema = z
  .object({
    name: text().trim().min(1).max(100),
    permissions: z.array(permissionSchema).min(1).max(64),
    expiresAt: z.iso.datetime(),
  })
  .strict();
export type CreateApiKey = z.infer<typeof createApiKeySchema>;

export interface User {
  id: string;
  tenantId: string;
  email: string;
  name: string;
  roles: string[];
  status: 'active' | 'disabled';
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
  sessionStarted: 'auth.session.started',
  sessionRevoked: 'auth.session.revoked',
  sessionRefreshed: 'auth.session.refreshed',
  apiKeyCreated: 'auth.api_key.created',
  apiKeyRevoked: 'auth.api_key.revoked',
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
