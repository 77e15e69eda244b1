import { Controller, Delete, Get, HttpCode, Post, Put, Req, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { randomBytes } from 'node:crypto';
import { commands, queries, RouteInput, RouteOutput, routes, RpcResponse } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';

const r = routes.sso;
const C = commands.auth;

const CALLBACK_PATH = '/api/v1/auth/sso/callback';
/**
 * Ties a sign-in to the browser that started it (against login CSRF): a random value in an
 * HttpOnly cookie sent only to the callback, whose hash the pending sign-in keeps. SameSite=Lax
 * still sends it on the provider's top-level redirect back. Lives as long as a pending sign-in.
 */
const BINDING_COOKIE = 'keel_sso_binding';
const BINDING_SECONDS = 600;
/** Starting asks the provider for its discovery document; completing makes up to four calls to it and provisions the user. */
const START_TIMEOUT_MS = 10_000;
const CALLBACK_TIMEOUT_MS = 20_000;

function clientOf(req: KeelRequest) {
  const ua = req.headers['user-agent'];
  return { ip: req.ip, ...(typeof ua === 'string' ? { userAgent: ua.slice(0, 512) } : {}), correlationId: req.correlationId! };
}

function bindingCookie(req: KeelRequest, value: string, maxAge: number): string {
  return `${BINDING_COOKIE}=${value}; Path=${CALLBACK_PATH}; Max-Age=${maxAge}; HttpOnly; SameSite=Lax${req.protocol === 'https' ? '; Secure' : ''}`;
}

function bindingOf(req: KeelRequest): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [name, ...value] = part.trim().split('=');
    if (name === BINDING_COOKIE) return value.join('=');
  }
  return undefined;
}

/** Single sign-on: a tenant's identity providers, and the OpenID Connect sign-in through them. */
@Controller()
export class SsoController {
  constructor(private readonly rpc: TypedRpc) {}

  @Post('api/v1/tenants/:tenantId/identity-providers')
  @HttpCode(201)
  @Endpoint(r.create)
  async create(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.create>): Promise<RouteOutput<typeof r.create>> {
    const result = await this.rpc.call(C.createIdentityProvider, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
    void reply.header('location', `/api/v1/tenants/${input.params.tenantId}/identity-providers/${result.state.id}`).header('etag', `"${result.version}"`);
    return { ...result.state, position: result.position };
  }

  @Get('api/v1/tenants/:tenantId/identity-providers')
  @Endpoint(r.list)
  async list(@Input() input: RouteInput<typeof r.list>): Promise<RouteOutput<typeof r.list>> {
    return this.rpc.call(queries.auth.identityProviders, input.params);
  }

  @Get('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @Endpoint(r.get)
  async get(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.get>): Promise<RouteOutput<typeof r.get>> {
    const provider = await this.rpc.call(queries.auth.identityProvider, input.params);
    void reply.header('etag', `"${provider.version}"`);
    return provider;
  }

  @Put('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @Endpoint(r.update)
  async update(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.update>): Promise<RouteOutput<typeof r.update>> {
    const result = await this.rpc.call(C.updateIdentityProvider, { meta: authMeta(req), payload: { ...input.params, data: input.body } });
    void reply.header('etag', `"${result.version}"`);
    return { ...result.state, position: result.position };
  }

  @Delete('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @HttpCode(204)
  @Endpoint(r.remove)
  async remove(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.remove>): Promise<void> {
    await this.rpc.call(C.deleteIdentityProvider, { meta: authMeta(req), payload: input.params });
  }

  @Get('api/v1/auth/sso/:tenantSlug/:providerId/start')
  @Endpoint(r.start)
  async start(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.start>): Promise<void> {
    const binding = randomBytes(32).toString('base64url');
    const { authorizationUrl } = await this.rpc.call(
      C.startSso,
      {
        client: clientOf(req),
        payload: {
          tenant: input.params.tenantSlug,
          providerId: input.params.providerId,
          // The provider sends the browser back here; it must be among the client's registered redirect URIs.
          callbackUrl: `${req.protocol}://${req.headers.host ?? 'localhost'}${CALLBACK_PATH}`,
          browserBinding: binding,
          ...(input.query.redirectUri ? { redirectUri: input.query.redirectUri } : {}),
        },
      },
      START_TIMEOUT_MS,
    );
    void reply.status(302).header('location', authorizationUrl).header('set-cookie', bindingCookie(req, binding, BINDING_SECONDS)).header('cache-control', 'no-store');
  }

  @Get('api/v1/auth/sso/callback')
  @Endpoint(r.callback)
  async callback(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.callback>): Promise<RpcResponse<typeof C.completeSso>['tokens'] | void> {
    const q = input.query;
    const binding = bindingOf(req);
    void reply.header('cache-control', 'no-store');
    const { tokens, redirectUri } = await this.rpc.call(
      C.completeSso,
      {
        client: clientOf(req),
        payload: {
          state: q.state,
          ...(binding ? { browserBinding: binding } : {}),
          ...(q.code ? { code: q.code } : {}),
          ...(q.error ? { error: q.error } : {}),
          ...(q.error_description ? { errorDescription: q.error_description } : {}),
          ...(q.iss ? { iss: q.iss } : {}),
        },
      },
      CALLBACK_TIMEOUT_MS,
    );
    void reply.header('set-cookie', bindingCookie(req, '', 0));
    if (!redirectUri) return tokens;
    // In the fragment, the tokens stay out of server logs and Referer headers.
    const fragment = new URLSearchParams({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, tokenType: tokens.tokenType, expiresIn: String(tokens.expiresIn) });
    void reply.status(302).header('location', `${redirectUri}#${fragment}`);
  }
}
