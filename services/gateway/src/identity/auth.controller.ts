import { Controller, Delete, Get, HttpCode, Patch, Post, Req } from '@nestjs/common';
import { commands, KeelError, queries, RouteInput, RouteOutput, routes, TOKEN_ISSUER } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';
import { userAnswer } from './tenant-identity.controller';

const r = routes.auth;
const C = commands.auth;

function client(req: KeelRequest) {
  const ua = req.headers['user-agent'];
  return { ip: req.ip, ...(typeof ua === 'string' ? { userAgent: ua.slice(0, 512) } : {}), correlationId: req.correlationId! };
}

/** The signed-in user whose own second factor a route manages (API keys and the operator token have none). */
function factorOwner(req: KeelRequest): { tenantId: string; userId: string } {
  const p = req.principal!;
  if (p.actor.kind !== 'user') throw new KeelError('forbidden', 'Only a signed-in user can manage their own second factor.');
  return { tenantId: p.tenantId, userId: p.actor.id };
}

@Controller()
export class AuthController {
  constructor(private readonly rpc: TypedRpc) {}

  @Post('api/v1/auth/login')
  @HttpCode(200)
  @Endpoint(r.login)
  async login(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.login>): Promise<RouteOutput<typeof r.login>> {
    return this.rpc.call(C.login, { client: client(req), payload: input.body });
  }

  @Post('api/v1/auth/refresh')
  @HttpCode(200)
  @Endpoint(r.refresh)
  async refresh(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.refresh>): Promise<RouteOutput<typeof r.refresh>> {
    return this.rpc.call(C.refresh, { client: client(req), payload: input.body });
  }

  @Post('api/v1/auth/logout')
  @HttpCode(204)
  @Endpoint(r.logout)
  async logout(@Req() req: KeelRequest): Promise<void> {
    const p = req.principal!;
    if (!p.sessionId) return;
    await this.rpc.call(C.revokeSession, { meta: authMeta(req), payload: { tenantId: p.tenantId, sessionId: p.sessionId } });
  }

  @Post('api/v1/auth/reauthenticate')
  @HttpCode(200)
  @Endpoint(r.reauthenticate)
  async reauthenticate(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.reauthenticate>): Promise<RouteOutput<typeof r.reauthenticate>> {
    const p = req.principal!;
    if (p.actor.kind !== 'user' || !p.sessionId) throw new KeelError('forbidden', 'Only a signed-in user re-authenticates (an API key or the operator token has no session).');
    return this.rpc.call(C.reauthenticate, { meta: authMeta(req), payload: { tenantId: p.tenantId, userId: p.actor.id, sessionId: p.sessionId, data: input.body } });
  }

  @Post('api/v1/auth/password')
  @HttpCode(204)
  @Endpoint(r.changePassword)
  async changePassword(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.changePassword>): Promise<void> {
    const p = req.principal!;
    await this.rpc.call(C.changePassword, { meta: authMeta(req), payload: { tenantId: p.tenantId, userId: p.actor.id, data: input.body } });
  }

  @Post('api/v1/auth/mfa/totp')
  @HttpCode(201)
  @Endpoint(r.startTotp)
  async startTotp(@Req() req: KeelRequest): Promise<RouteOutput<typeof r.startTotp>> {
    return this.rpc.call(C.mfaTotpStart, { meta: authMeta(req), payload: factorOwner(req) });
  }

  @Post('api/v1/auth/mfa/totp/verify')
  @HttpCode(200)
  @Endpoint(r.confirmTotp)
  async confirmTotp(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.confirmTotp>): Promise<RouteOutput<typeof r.confirmTotp>> {
    return this.rpc.call(C.mfaTotpConfirm, { meta: authMeta(req), payload: { ...factorOwner(req), code: input.body.code } });
  }

  @Delete('api/v1/auth/mfa/totp')
  @HttpCode(204)
  @Endpoint(r.removeTotp)
  async removeTotp(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.removeTotp>): Promise<void> {
    await this.rpc.call(C.mfaTotpRemove, { meta: authMeta(req), payload: { ...factorOwner(req), code: input.body.code } });
  }

  @Patch('api/v1/auth/profile')
  @Endpoint(r.updateProfile)
  async updateProfile(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.updateProfile>): Promise<RouteOutput<typeof r.updateProfile>> {
    const p = req.principal!;
    if (p.actor.kind !== 'user') throw new KeelError('forbidden', 'Only a signed-in user has a profile.');
    return userAnswer(await this.rpc.call(C.updateProfile, { meta: authMeta(req), payload: { tenantId: p.tenantId, userId: p.actor.id, data: input.body } }));
  }

  @Get('api/v1/auth/sessions')
  @Endpoint(r.mySessions)
  async mySessions(@Req() req: KeelRequest): Promise<RouteOutput<typeof r.mySessions>> {
    const p = req.principal!;
    return this.rpc.call(queries.auth.sessions, { tenantId: p.tenantId, userId: p.actor.id });
  }

  @Delete('api/v1/auth/sessions/:sessionId')
  @HttpCode(204)
  @Endpoint(r.revokeMine)
  async revokeMine(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.revokeMine>): Promise<void> {
    const p = req.principal!;
    await this.rpc.call(C.revokeSession, {
      meta: authMeta(req),
      payload: { tenantId: p.tenantId, sessionId: input.params.sessionId, onlyOfUser: p.actor.id },
    });
  }

  @Get('.well-known/jwks.json')
  @Endpoint(r.jwks)
  async jwks(): Promise<RouteOutput<typeof r.jwks>> {
    return this.rpc.call(queries.auth.jwks, {});
  }

  @Get('.well-known/openid-configuration')
  @Endpoint(r.discovery)
  discovery(@Req() req: KeelRequest): RouteOutput<typeof r.discovery> {
    const base = `${req.protocol}://${req.headers.host ?? 'localhost'}`;
    return {
      issuer: TOKEN_ISSUER,
      jwks_uri: `${base}/.well-known/jwks.json`,
      token_endpoint: `${base}/api/v1/auth/login`,
      response_types_supported: ['token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['EdDSA'],
      token_endpoint_auth_methods_supported: ['none'],
      grant_types_supported: ['password', 'refresh_token'],
    };
  }

  @Post('api/v1/admin/signing-keys/rotate')
  @HttpCode(200)
  @Endpoint(r.rotate)
  async rotate(@Req() req: KeelRequest): Promise<RouteOutput<typeof r.rotate>> {
    return this.rpc.call(C.rotateSigningKey, { meta: authMeta(req) });
  }
}
