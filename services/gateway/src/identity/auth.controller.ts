import { Controller, Delete, Get, HttpCode, Patch, Post, Req } from '@nestjs/common';
import { z } from 'zod';
import { changePasswordSchema, KeelError, loginSchema, permissions as P, profileSchema, refreshSchema, SessionInfo, text, TokenPair, TOKEN_ISSUER } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';
import { userAnswer } from './tenant-identity.controller';

const sessionParams = z.object({ sessionId: z.uuid() }).strict();
const totpCode = z.object({ code: text().regex(/^\d{6}$/, 'must be the 6-digit code from your authenticator') }).strict();

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
  constructor(private readonly rpc: RpcClient) {}

  @Post('api/v1/auth/login')
  @HttpCode(200)
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Sign in (tenant slug; omit it for platform users) → access and refresh tokens', body: loginSchema, response: 'TokenPair' })
  async login(@Req() req: KeelRequest, @Input() input: ValidInput): Promise<TokenPair> {
    return this.rpc.request('cmd.auth.login', { client: client(req), payload: input.body });
  }

  @Post('api/v1/auth/refresh')
  @HttpCode(200)
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Exchange a refresh token (rotated on every use; reuse revokes the session)', body: refreshSchema, response: 'TokenPair' })
  async refresh(@Req() req: KeelRequest, @Input() input: ValidInput): Promise<TokenPair> {
    return this.rpc.request('cmd.auth.refresh', { client: client(req), payload: input.body });
  }

  @Post('api/v1/auth/logout')
  @HttpCode(204)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Sign out: revoke this session' })
  async logout(@Req() req: KeelRequest): Promise<void> {
    const p = req.principal!;
    if (!p.sessionId) return;
    await this.rpc.request('cmd.auth.revoke_session', { meta: authMeta(req), payload: { tenantId: p.tenantId, sessionId: p.sessionId } });
  }

  @Post('api/v1/auth/password')
  @HttpCode(204)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Change your own password', body: changePasswordSchema })
  async changePassword(@Req() req: KeelRequest, @Input() input: ValidInput): Promise<void> {
    const p = req.principal!;
    await this.rpc.request('cmd.auth.change_password', { meta: authMeta(req), payload: { tenantId: p.tenantId, userId: p.actor.id, data: input.body } });
  }

  @Post('api/v1/auth/mfa/totp')
  @HttpCode(201)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Start TOTP enrolment: a new secret and otpauth:// URL for your authenticator app (confirm it with a code)', status: 201 })
  async startTotp(@Req() req: KeelRequest): Promise<{ secret: string; otpauthUrl: string }> {
    return this.rpc.request('cmd.auth.mfa_totp_start', { meta: authMeta(req), payload: factorOwner(req) });
  }

  @Post('api/v1/auth/mfa/totp/verify')
  @HttpCode(200)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Confirm TOTP enrolment with a current code → 10 single-use recovery codes (shown once)', body: totpCode })
  async confirmTotp(@Req() req: KeelRequest, @Input() input: ValidInput<z.infer<typeof totpCode>>): Promise<{ recoveryCodes: string[] }> {
    return this.rpc.request('cmd.auth.mfa_totp_confirm', { meta: authMeta(req), payload: { ...factorOwner(req), code: input.body.code } });
  }

  @Delete('api/v1/auth/mfa/totp')
  @HttpCode(204)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Remove your TOTP factor and its recovery codes (needs a current code)', body: totpCode })
  async removeTotp(@Req() req: KeelRequest, @Input() input: ValidInput<z.infer<typeof totpCode>>): Promise<void> {
    await this.rpc.request('cmd.auth.mfa_totp_remove', { meta: authMeta(req), payload: { ...factorOwner(req), code: input.body.code } });
  }

  @Patch('api/v1/auth/profile')
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Update your own profile', body: profileSchema })
  async updateProfile(@Req() req: KeelRequest, @Input() input: ValidInput) {
    const p = req.principal!;
    if (p.actor.kind !== 'user') throw new KeelError('forbidden', 'Only a signed-in user has a profile.');
    return userAnswer(await this.rpc.request('cmd.auth.update_profile', { meta: authMeta(req), payload: { tenantId: p.tenantId, userId: p.actor.id, data: input.body } }));
  }

  @Get('api/v1/auth/sessions')
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Your own active sessions', response: 'SessionList' })
  async mySessions(@Req() req: KeelRequest): Promise<{ items: SessionInfo[] }> {
    const p = req.principal!;
    return this.rpc.request('qry.auth.sessions', { tenantId: p.tenantId, userId: p.actor.id });
  }

  @Delete('api/v1/auth/sessions/:sessionId')
  @HttpCode(204)
  @Endpoint({ permission: 'authenticated', tag: 'auth', summary: 'Revoke one of your own sessions', params: sessionParams })
  async revokeMine(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof sessionParams>>): Promise<void> {
    const p = req.principal!;
    await this.rpc.request('cmd.auth.revoke_session', {
      meta: authMeta(req),
      payload: { tenantId: p.tenantId, sessionId: input.params.sessionId, onlyOfUser: p.actor.id },
    });
  }

  @Get('.well-known/jwks.json')
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Keys that verify Keel access tokens (JWK set, EdDSA)' })
  async jwks() {
    return this.rpc.request('qry.auth.jwks', {});
  }

  @Get('.well-known/openid-configuration')
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Discovery document for standard OIDC/JOSE libraries' })
  discovery(@Req() req: KeelRequest) {
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
  @Endpoint({ permission: P.platformOperate, tag: 'operations', summary: 'Rotate the token signing key (the old one stays published until its tokens expire)' })
  async rotate(@Req() req: KeelRequest): Promise<{ kid: string }> {
    return this.rpc.request('cmd.auth.rotate_signing_key', { meta: authMeta(req) });
  }
}
