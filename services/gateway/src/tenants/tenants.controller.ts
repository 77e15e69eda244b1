import { Controller, Delete, Get, HttpCode, Patch, Post, Req, Res, UseInterceptors } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { z } from 'zod';
import {
  changePlanSchema,
  closeTenantSchema,
  CommandResult,
  createTenantSchema,
  Page,
  permissions as P,
  suspendTenantSchema,
  Tenant,
  text,
  tenantStatusSchema,
  updateSettingsSchema,
} from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { IdempotencyInterceptor } from '../http/idempotency.interceptor';
import { commandMeta, KeelRequest } from '../http/request-context';
import { TenantDirectory } from './tenant-directory';

const consistentWith = z.coerce.number().int().min(0).optional().describe('Answer once the read model has applied this position');
const idParams = z.object({ id: z.uuid() }).strict();
const idOrSlugParams = z.object({ idOrSlug: text().min(1).max(200) }).strict();
const listQuery = z
  .object({
    cursor: text().max(200).optional(),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    status: tenantStatusSchema.optional(),
    consistentWith,
  })
  .strict();
const getQuery = z.object({ consistentWith }).strict();
const emptyBody = z.object({}).strict().optional();

type Result = CommandResult<Tenant>;


@Controller('api/v1/tenants')
export class TenantsController {
  constructor(
    private readonly rpc: RpcClient,
    private readonly directory: TenantDirectory,
  ) {}

  private command(name: string, req: KeelRequest, payload: unknown) {
    return this.rpc.request<Result>(`cmd.tenant.${name}`, { meta: commandMeta(req), payload });
  }

  @Post()
  @HttpCode(201)
  @Endpoint({ permission: P.tenantsCreate, tag: 'tenants', summary: 'Create a tenant', body: createTenantSchema, status: 201, idempotent: true, response: 'TenantCommandResult' })
  @UseInterceptors(IdempotencyInterceptor)
  async create(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput) {
    const r = await this.command('create', req, input.body);
    void reply.header('location', `/api/v1/tenants/${r.state.id}`);
    return this.answer(reply, r);
  }

  @Get()
  @Endpoint({ permission: P.tenantsList, tag: 'tenants', summary: 'List tenants (cursor pagination, creation order)', query: listQuery, response: 'TenantPage' })
  async list(@Input() input: ValidInput<unknown, z.infer<typeof listQuery>>): Promise<Page<Tenant>> {
    return this.rpc.request<Page<Tenant>>('qry.tenant.list', input.query);
  }

  @Get(':idOrSlug')
  @Endpoint({ permission: P.tenantsRead, tenantParam: 'idOrSlug', tag: 'tenants', summary: 'Get a tenant by id or slug', params: idOrSlugParams, query: getQuery, response: 'Tenant' })
  async get(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, z.infer<typeof getQuery>, z.infer<typeof idOrSlugParams>>): Promise<Tenant> {
    const tenant = await this.directory.get(input.params.idOrSlug, input.query.consistentWith);
    void reply.header('etag', `"${tenant.version}"`);
    return tenant;
  }

  @Patch(':id/plan')
  @Endpoint({ permission: P.tenantsChangePlan, tenantParam: 'id', tag: 'tenants', summary: 'Change the plan (and quotas for plan "custom")', params: idParams, body: changePlanSchema, conditional: true, response: 'TenantCommandResult' })
  async changePlan(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, z.infer<typeof idParams>>) {
    return this.answer(reply, await this.command('change_plan', req, { tenantId: input.params.id, data: input.body }));
  }

  @Patch(':id/settings')
  @Endpoint({ permission: P.tenantsUpdate, tenantParam: 'id', tag: 'tenants', summary: 'Update settings (only the named ones change)', params: idParams, body: updateSettingsSchema, conditional: true, response: 'TenantCommandResult' })
  async updateSettings(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, z.infer<typeof idParams>>) {
    return this.answer(reply, await this.command('update_settings', req, { tenantId: input.params.id, data: input.body }));
  }

  @Post(':id/suspend')
  @HttpCode(200)
  @Endpoint({ permission: P.tenantsSuspend, tenantParam: 'id', tag: 'tenants', summary: 'Suspend a tenant', params: idParams, body: suspendTenantSchema, conditional: true, idempotent: true, response: 'TenantCommandResult' })
  @UseInterceptors(IdempotencyInterceptor)
  async suspend(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, z.infer<typeof idParams>>) {
    return this.answer(reply, await this.command('suspend', req, { tenantId: input.params.id, data: input.body }));
  }

  @Post(':id/reactivate')
  @HttpCode(200)
  @Endpoint({ permission: P.tenantsSuspend, tenantParam: 'id', tag: 'tenants', summary: 'Reactivate a suspended tenant', params: idParams, body: emptyBody, conditional: true, idempotent: true, response: 'TenantCommandResult' })
  @UseInterceptors(IdempotencyInterceptor)
  async reactivate(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, z.infer<typeof idParams>>) {
    return this.answer(reply, await this.command('reactivate', req, { tenantId: input.params.id, data: {} }));
  }

  @Delete(':id')
  @Endpoint({ permission: P.tenantsClose, tenantParam: 'id', tag: 'tenants', summary: 'Close a tenant (final: a closed tenant accepts nothing)', params: idParams, body: closeTenantSchema.optional(), conditional: true, response: 'TenantCommandResult' })
  async close(@Req() req: KeelRequest, @Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, unknown, z.infer<typeof idParams>>) {
    return this.answer(reply, await this.command('close', req, { tenantId: input.params.id, data: input.body ?? {} }));
  }

  /** The answer to a tenant command: the tenant, its version and the event's stream position. */
  private answer(reply: FastifyReply, r: Result) {
    this.directory.remember(r.state);
    void reply.header('etag', `"${r.version}"`);
    return { tenant: r.state, version: r.version, position: r.position };
  }
}
