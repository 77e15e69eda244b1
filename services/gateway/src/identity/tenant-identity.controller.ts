import { Controller, Delete, Get, HttpCode, Patch, Post, Put, Req, UseInterceptors } from '@nestjs/common';
import { commands, queries, RouteInput, RouteOutput, routes } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { IdempotencyInterceptor } from '../http/idempotency.interceptor';
import { authMeta, KeelRequest } from '../http/request-context';

const r = routes.tenantIdentity;
const C = commands.auth;
const Q = queries.auth;

/** A user command's answer: the user, and the event's position (for `consistentWith`). */
export const userAnswer = <S extends object>(result: { state: S; position: number }): S & { position: number } => ({ ...result.state, position: result.position });

/** Users, API keys and sessions of one tenant: `/api/v1/tenants/{tenantId}/…`. */
@Controller('api/v1/tenants/:tenantId')
export class TenantIdentityController {
  constructor(private readonly rpc: TypedRpc) {}

  @Post('users')
  @HttpCode(201)
  @Endpoint(r.createUser)
  @UseInterceptors(IdempotencyInterceptor)
  async createUser(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.createUser>): Promise<RouteOutput<typeof r.createUser>> {
    return userAnswer(await this.rpc.call(C.createUser, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } }));
  }

  @Get('users')
  @Endpoint(r.listUsers)
  async listUsers(@Input() input: RouteInput<typeof r.listUsers>): Promise<RouteOutput<typeof r.listUsers>> {
    return this.rpc.call(Q.users, { tenantId: input.params.tenantId, ...input.query });
  }

  @Get('users/:userId')
  @Endpoint(r.getUser)
  async getUser(@Input() input: RouteInput<typeof r.getUser>): Promise<RouteOutput<typeof r.getUser>> {
    return this.rpc.call(Q.user, input.params);
  }

  /**
   * A person's data as one document: what the auth service holds, and every ledger entry they are
   * actor or subject of (their sessions' and API keys' included), page by page from the audit service, decrypted there.
   */
  @Get('users/:userId/personal-data')
  @Endpoint(r.exportPersonalData)
  async exportPersonalData(@Input() input: RouteInput<typeof r.exportPersonalData>): Promise<RouteOutput<typeof r.exportPersonalData>> {
    const { tenantId, userId } = input.params;
    const held = await this.rpc.call(Q.personalData, { tenantId, userId });
    const ledgerEntries: RouteOutput<typeof r.exportPersonalData>['ledgerEntries'] = [];
    for (let afterSeq = 0; ; ) {
      const page = await this.rpc.call(queries.audit.subjectEntries, { tenantId, subjectId: userId, afterSeq, limit: 200 });
      ledgerEntries.push(...page.items);
      if (!page.nextCursor) break;
      afterSeq = Number(page.nextCursor);
    }
    return { ...held, ledgerEntries };
  }

  @Patch('users/:userId')
  @Endpoint(r.updateProfile)
  async updateProfile(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.updateProfile>): Promise<RouteOutput<typeof r.updateProfile>> {
    return userAnswer(await this.rpc.call(C.updateProfile, { meta: authMeta(req), payload: { ...input.params, data: input.body } }));
  }

  @Patch('users/:userId/status')
  @Endpoint(r.setStatus)
  async setStatus(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.setStatus>): Promise<RouteOutput<typeof r.setStatus>> {
    return userAnswer(await this.rpc.call(C.setUserStatus, { meta: authMeta(req), payload: { ...input.params, status: input.body.status } }));
  }

  @Put('users/:userId/roles')
  @Endpoint(r.setRoles)
  async setRoles(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.setRoles>): Promise<RouteOutput<typeof r.setRoles>> {
    return userAnswer(await this.rpc.call(C.setUserRoles, { meta: authMeta(req), payload: { ...input.params, data: input.body } }));
  }

  @Post('users/:userId/password')
  @HttpCode(204)
  @Endpoint(r.resetPassword)
  async resetPassword(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.resetPassword>): Promise<void> {
    await this.rpc.call(C.resetPassword, { meta: authMeta(req), payload: { ...input.params, data: input.body } });
  }

  @Post('api-keys')
  @HttpCode(201)
  @Endpoint(r.createKey)
  async createKey(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.createKey>): Promise<RouteOutput<typeof r.createKey>> {
    return this.rpc.call(C.createApiKey, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
  }

  @Post('api-keys/:keyId/rotate')
  @HttpCode(200)
  @Endpoint(r.rotateKey)
  async rotateKey(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.rotateKey>): Promise<RouteOutput<typeof r.rotateKey>> {
    return this.rpc.call(C.rotateApiKey, { meta: authMeta(req), payload: { ...input.params, data: input.body } });
  }

  @Get('api-keys')
  @Endpoint(r.listKeys)
  async listKeys(@Input() input: RouteInput<typeof r.listKeys>): Promise<RouteOutput<typeof r.listKeys>> {
    return this.rpc.call(Q.apiKeys, { tenantId: input.params.tenantId });
  }

  @Delete('api-keys/:keyId')
  @Endpoint(r.revokeKey)
  async revokeKey(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.revokeKey>): Promise<RouteOutput<typeof r.revokeKey>> {
    return this.rpc.call(C.revokeApiKey, { meta: authMeta(req), payload: input.params });
  }

  @Get('sessions')
  @Endpoint(r.listSessions)
  async listSessions(@Input() input: RouteInput<typeof r.listSessions>): Promise<RouteOutput<typeof r.listSessions>> {
    return this.rpc.call(Q.sessions, { tenantId: input.params.tenantId, ...input.query });
  }

  @Delete('sessions/:sessionId')
  @HttpCode(204)
  @Endpoint(r.revokeSession)
  async revokeSession(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.revokeSession>): Promise<void> {
    await this.rpc.call(C.revokeSession, { meta: authMeta(req), payload: input.params });
  }
}
