import { CommandMeta, TenantSettings, TokenPair } from '@keel/contracts';

/**
 * What single sign-on needs from the sessions: start one, exactly as a password sign-in does,
 * for a user whose identity is already proven. SessionsService provides it; the auth module
 * binds it with a typed factory, so the compiler checks the two agree.
 */
export interface SessionStarter {
  startSession(tenantId: string, userId: string, roles: string[], settings: TenantSettings, meta: CommandMeta): Promise<TokenPair>;
}

export const SESSION_STARTER = Symbol('SESSION_STARTER');
