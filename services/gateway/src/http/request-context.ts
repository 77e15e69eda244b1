import { FastifyRequest } from 'fastify';
import { Actor, CommandMeta } from '@keel/contracts';

export interface Principal {
  actor: Actor;
  /** `*` holds every permission (the operator's break-glass token). */
  permissions: ReadonlySet<string> | '*';
  /** The tenant the credential belongs to (`platform` for platform users and the operator). */
  tenantId: string;
  sessionId?: string;
  /** When the person last proved who they are (seconds since epoch; a user's access token only) and how (RFC 8176). */
  authTime?: number;
  amr?: string[];
  /** May act in any tenant (platform administrators only). */
  crossTenant: boolean;
}

export type KeelRequest = FastifyRequest & {
  principal?: Principal;
  correlationId?: string;
  valid?: { body: unknown; query: unknown; params: unknown };
  expectedVersion?: number;
  /** From the `Idempotency-Key` (see IdempotencyInterceptor): the command's own id. */
  commandId?: string;
};

export function commandMeta(req: KeelRequest): CommandMeta {
  return {
    actor: req.principal!.actor,
    correlationId: req.correlationId!,
    ...(req.expectedVersion !== undefined ? { expectedVersion: req.expectedVersion } : {}),
    ...(req.commandId !== undefined ? { commandId: req.commandId } : {}),
  };
}

/** Command metadata for the identity service, which also needs what the caller holds. */
export function authMeta(req: KeelRequest): CommandMeta & { permissions: '*' | string[] } {
  const p = req.principal!.permissions;
  return { ...commandMeta(req), permissions: p === '*' ? '*' : [...p] };
}
