import { Controller, Delete, Get, HttpCode, Patch, Post, Put, Req, UseInterceptors } from '@nestjs/common';
import { z } from 'zod';
import { createApiKeySchema, createUserSchema, permissions as P, profileSchema, resetPasswordSchema, setRolesSchema } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { IdempotencyInterceptor } from '../http/idempotency.interceptor';
import { authMeta, KeelRequest } from '../http/request-context';

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const userParams = tenantParams.extend({ userId: z.uuid() }).strict();
const keyParams = tenantParams.extend({ keyId: z.uuid() }).strict();
const sessionParams = tenantParams.extend({ sessionId: z.uuid() }).strict();
const listQuery = z.object({ cursor: z.uuid().optional(), limit: z.coerce.number().int().min(1).max(500).default(50) }).strict();
const sessionsQuery = z.object({ userId: z.uuid().optional() }).strict();
const statusBody = z.object({ status: z.enum(['active', 'disabled']) }).strict();

type T = z.infer<typeof tenantParams>;

/** A user command's answer: the user, and the event's position (for `consistentWith`). */
export const userAnswer = (r: { state: object; position: number }) => ({ ...r.state, position: r.position });
type U = z.infer<typeof userParams>;

/** Users, API keys and sessions of one tenant: `/api/v1/tenants/{tenantId}/…`. */
@Controller('api/v1/tenants/:tenantId')
export class TenantIdentityController {
  constructor(private readonly rpc: RpcClient) {}

  @Post('users')
  @HttpCode(201)
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'users', summary: 'Create a user (email unique in the tenant; the plan caps the number)', params: tenantParams, body: createUserSchema, status: 201, idempotent: true, response: 'UserCommandResult' })
  @UseInterceptors(IdempotencyInterceptor)
  async createUser(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, T>) {
    return userAnswer(
      await this.rpc.request('cmd.auth.create_user', { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } }),
    );
  }

  @Get('users')
  @Endpoint({ permission: P.usersRead, tenantParam: 'tenantId', tag: 'users', summary: 'List users', params: tenantParams, query: listQuery })
  async listUsers(@Input() input: ValidInput<unknown, z.infer<typeof listQuery>, T>) {
    return this.rpc.request('qry.auth.users', { tenantId: input.params.tenantId, ...input.query });
  }

  @Get('users/:userId')
  @Endpoint({ permission: P.usersRead, tenantParam: 'tenantId', tag: 'users', summary: 'Get a user', params: userParams })
  async getUser(@Input() input: ValidInput<unknown, unknown, U>) {
    return this.rpc.request('qry.auth.user', input.params);
  }

  @Patch('users/:userId')
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'users', summary: 'Update a user\'s profile', params: userParams, body: profileSchema })
  async updateProfile(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, U>) {
    return userAnswer(await this.rpc.request('cmd.auth.update_profile', { meta: authMeta(req), payload: { ...input.params, data: input.body } }));
  }

  @Patch('users/:userId/status')
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'users', summary: 'Disable (revokes every session) or enable a user', params: userParams, body: statusBody })
  async setStatus(@Req() req: KeelRequest, @Input() input: ValidInput<z.infer<typeof statusBody>, unknown, U>) {
    return userAnswer(await this.rpc.request('cmd.auth.set_user_status', { meta: authMeta(req), payload: { ...input.params, status: input.body.status } }));
  }

  @Put('users/:userId/roles')
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'users', summary: 'Set a user\'s roles (only roles whose permissions you hold)', params: userParams, body: setRolesSchema })
  async setRoles(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, U>) {
    return userAnswer(await this.rpc.request('cmd.auth.set_user_roles', { meta: authMeta(req), payload: { ...input.params, data: input.body } }));
  }

  @Post('users/:userId/password')
  @HttpCode(204)
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'users', summary: 'Reset a user\'s password (revokes every session)', params: userParams, body: resetPasswordSchema })
  async resetPassword(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, U>) {
    await this.rpc.request('cmd.auth.reset_password', { meta: authMeta(req), payload: { ...input.params, data: input.body } });
  }

  @Post('api-keys')
  @HttpCode(201)
  @Endpoint({ permission: P.apiKeysWrite, tenantParam: 'tenantId', tag: 'api-keys', summary: 'Create an API key (permissions ⊆ yours); the secret is shown once', params: tenantParams, body: createApiKeySchema, status: 201 })
  async createKey(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, T>) {
    return this.rpc.request('cmd.auth.create_api_key', { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
  }

  @Get('api-keys')
  @Endpoint({ permission: P.apiKeysRead, tenantParam: 'tenantId', tag: 'api-keys', summary: 'List API keys (never their secrets)', params: tenantParams })
  async listKeys(@Input() input: ValidInput<unknown, unknown, T>) {
    return this.rpc.request('qry.auth.api_keys', { tenantId: input.params.tenantId });
  }

  @Delete('api-keys/:keyId')
  @Endpoint({ permission: P.apiKeysWrite, tenantParam: 'tenantId', tag: 'api-keys', summary: 'Revoke an API key (refused everywhere within a second)', params: keyParams })
  async revokeKey(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof keyParams>>) {
    return this.rpc.request('cmd.auth.revoke_api_key', { meta: authMeta(req), payload: input.params });
  }

  @Get('sessions')
  @Endpoint({ permission: P.sessionsRead, tenantParam: 'tenantId', tag: 'sessions', summary: 'Active sessions in the tenant', params: tenantParams, query: sessionsQuery })
  async listSessions(@Input() input: ValidInput<unknown, z.infer<typeof sessionsQuery>, T>) {
    return this.rpc.request('qry.auth.sessions', { tenantId: input.params.tenantId, ...input.query });
  }

  @Delete('sessions/:sessionId')
  @HttpCode(204)
  @Endpoint({ permission: P.sessionsRevoke, tenantParam: 'tenantId', tag: 'sessions', summary: 'Revoke a session (its tokens are refused within a second)', params: sessionParams })
  async revokeSession(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof sessionParams>>) {
    await this.rpc.request('cmd.auth.revoke_session', { meta: authMeta(req), payload: input.params });
  }
}
