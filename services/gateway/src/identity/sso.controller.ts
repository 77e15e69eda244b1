import { Controller, Delete, Get, HttpCode, Post, Put, Req, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { CommandResult, createIdentityProviderSchema, permissions as P, slugSchema, text, TokenPair, updateIdentityProviderSchema } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const providerParams = tenantParams.extend({ providerId: z.uuid() }).strict();
const startParams = z.object({ tenantSlug: slugSchema, providerId: z.uuid() }).strict();
const startQuery = z.object({ redirectUri: text().max(2048).pipe(z.url()).optional().describe('Send the browser there with the tokens in the fragment; one of the provider\'s redirectUris') }).strict();
// Not strict: providers add their own parameters to the callback (session_state, …).
const callbackQuery = z
  .object({
    state: text().min(1).max(128),
    code: text().min(1).max(4096).optional(),
    error: text().max(256).optional(),
    error_description: text({ multiline: true }).max(1024).optional(),
    iss: text().max(2048).optional(),
  })
  .loose();

type T = z.infer<typeof tenantParams>;
type Provider = z.infer<typeof providerParams>;
type Result = CommandResult<{ id: string; version: number }>;

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
  constructor(private readonly rpc: RpcClient) {}

  @Post('api/v1/tenants/:tenantId/identity-providers')
  @HttpCode(201)
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'identity-providers', summary: 'Add an identity provider (OpenID Connect); its roles must be ones you hold', params: tenantParams, body: createIdentityProviderSchema, status: 201 })
  async create(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, T>) {
    const r = await this.rpc.request<Result>('cmd.auth.create_identity_provider', { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
    void reply.header('location', `/api/v1/tenants/${input.params.tenantId}/identity-providers/${r.state.id}`).header('etag', `"${r.version}"`);
    return { ...r.state, position: r.position };
  }

  @Get('api/v1/tenants/:tenantId/identity-providers')
  @Endpoint({ permission: P.usersRead, tenantParam: 'tenantId', tag: 'identity-providers', summary: 'List identity providers (never their secrets)', params: tenantParams })
  async list(@Input() input: ValidInput<unknown, unknown, T>) {
    return this.rpc.request('qry.auth.identity_providers', input.params);
  }

  @Get('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @Endpoint({ permission: P.usersRead, tenantParam: 'tenantId', tag: 'identity-providers', summary: 'Get an identity provider (never its secret)', params: providerParams })
  async get(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, Provider>) {
    const provider = await this.rpc.request<{ version: number }>('qry.auth.identity_provider', input.params);
    void reply.header('etag', `"${provider.version}"`);
    return provider;
  }

  @Put('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'identity-providers', summary: 'Replace an identity provider\'s settings (omit clientSecret to keep it)', params: providerParams, body: updateIdentityProviderSchema, conditional: true })
  async update(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, Provider>) {
    const r = await this.rpc.request<Result>('cmd.auth.update_identity_provider', { meta: authMeta(req), payload: { ...input.params, data: input.body } });
    void reply.header('etag', `"${r.version}"`);
    return { ...r.state, position: r.position };
  }

  @Delete('api/v1/tenants/:tenantId/identity-providers/:providerId')
  @HttpCode(204)
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'identity-providers', summary: 'Delete an identity provider (its users stay, unlinked)', params: providerParams })
  async remove(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, Provider>): Promise<void> {
    await this.rpc.request('cmd.auth.delete_identity_provider', { meta: authMeta(req), payload: input.params });
  }

  @Get('api/v1/auth/sso/:tenantSlug/:providerId/start')
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Start single sign-on: 302 to the identity provider (authorization code + PKCE)', params: startParams, query: startQuery, status: 302 })
  async start(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, z.infer<typeof startQuery>, z.infer<typeof startParams>>): Promise<void> {
    const binding = randomBytes(32).toString('base64url');
    const { authorizationUrl } = await this.rpc.request<{ authorizationUrl: string }>(
      'cmd.auth.start_sso',
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
  @Endpoint({ permission: 'public', tag: 'auth', summary: 'Single sign-on callback → access and refresh tokens (or 302 to the start\'s redirectUri, tokens in the fragment)', query: callbackQuery, response: 'TokenPair' })
  async callback(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, z.infer<typeof callbackQuery>>): Promise<TokenPair | void> {
    const q = input.query;
    const binding = bindingOf(req);
    void reply.header('cache-control', 'no-store');
    const { tokens, redirectUri } = await this.rpc.request<{ tokens: TokenPair; redirectUri?: string }>(
      'cmd.auth.complete_sso',
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
