import { Controller, Delete, Get, HttpCode, Patch, Post, Req, Res, UseInterceptors } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { commands, queries, RouteInput, RouteOutput, routes, RpcResponse } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { IdempotencyInterceptor } from '../http/idempotency.interceptor';
import { commandMeta, KeelRequest } from '../http/request-context';
import { TenantDirectory } from './tenant-directory';

const r = routes.tenants;
const C = commands.tenant;
type Answer = RouteOutput<typeof r.create>;

// GET /api/v1/tenants/{idOrSlug} is a direct route (http/direct-routes.ts): a hot read served without Nest's layers.
@Controller('api/v1/tenants')
export class TenantsController {
  constructor(
    private readonly rpc: TypedRpc,
    private readonly directory: TenantDirectory,
  ) {}

  @Post()
  @HttpCode(201)
  @Endpoint(r.create)
  @UseInterceptors(IdempotencyInterceptor)
  async create(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.create>): Promise<Answer> {
    const result = await this.rpc.call(C.create, { meta: commandMeta(req), payload: input.body });
    void reply.header('location', `/api/v1/tenants/${result.state.id}`);
    return this.answer(reply, result);
  }

  @Get()
  @Endpoint(r.list)
  async list(@Input() input: RouteInput<typeof r.list>): Promise<RouteOutput<typeof r.list>> {
    return this.rpc.call(queries.tenant.list, input.query);
  }

  @Patch(':id/plan')
  @Endpoint(r.changePlan)
  async changePlan(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.changePlan>): Promise<Answer> {
    return this.answer(reply, await this.rpc.call(C.changePlan, { meta: commandMeta(req), payload: { tenantId: input.params.id, data: input.body } }));
  }

  @Patch(':id/settings')
  @Endpoint(r.updateSettings)
  async updateSettings(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.updateSettings>): Promise<Answer> {
    return this.answer(reply, await this.rpc.call(C.updateSettings, { meta: commandMeta(req), payload: { tenantId: input.params.id, data: input.body } }));
  }

  @Post(':id/suspend')
  @HttpCode(200)
  @Endpoint(r.suspend)
  @UseInterceptors(IdempotencyInterceptor)
  async suspend(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.suspend>): Promise<Answer> {
    return this.answer(reply, await this.rpc.call(C.suspend, { meta: commandMeta(req), payload: { tenantId: input.params.id, data: input.body } }));
  }

  @Post(':id/reactivate')
  @HttpCode(200)
  @Endpoint(r.reactivate)
  @UseInterceptors(IdempotencyInterceptor)
  async reactivate(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.reactivate>): Promise<Answer> {
    return this.answer(reply, await this.rpc.call(C.reactivate, { meta: commandMeta(req), payload: { tenantId: input.params.id, data: {} } }));
  }

  @Delete(':id')
  @Endpoint(r.close)
  async close(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.close>): Promise<Answer> {
    return this.answer(reply, await this.rpc.call(C.close, { meta: commandMeta(req), payload: { tenantId: input.params.id, data: input.body ?? {} } }));
  }

  /** The answer to a tenant command: the tenant, its version and the event's stream position. */
  private answer(reply: FastifyReply, result: RpcResponse<typeof C.create>): Answer {
    this.directory.remember(result.state);
    void reply.header('etag', `"${result.version}"`);
    return { tenant: result.state, version: result.version, position: result.position };
  }
}
