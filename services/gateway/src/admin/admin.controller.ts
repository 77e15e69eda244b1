import { Controller, Get, HttpCode, Post, Req } from '@nestjs/common';
import { z } from 'zod';
import {
  DeadLetterInfo, KeelError, LedgerEntry, Page, permissions as P, PROJECTION_SERVICES, projectionNameSchema, ProjectionStatus, projectionSubjects,
  RebuildResult,
} from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { commandMeta, KeelRequest } from '../http/request-context';

const nameParams = z.object({ name: projectionNameSchema }).strict();
const letterParams = z.object({ name: projectionNameSchema, id: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER) }).strict();
const lettersQuery = z
  .object({
    resolved: z.enum(['true', 'false']).default('false').describe('list resolved (retried or skipped) letters instead of open ones'),
    limit: z.coerce.number().int().min(1).max(500).default(100),
  })
  .strict();
const incidentsQuery = z
  .object({
    cursor: z.string().regex(/^\d{1,18}$/, 'must be a cursor this API returned').optional(),
    limit: z.coerce.number().int().min(1).max(1_000).default(100),
  })
  .strict();

/** `tenant.tenants` → the tenant service's `tenants` projection; a service Keel does not have is 404. */
function split(name: string): { service: string; projection: string } {
  const [service, projection] = name.split('.') as [string, string];
  if (!(PROJECTION_SERVICES as readonly string[]).includes(service)) {
    throw new KeelError('not_found', `No service ${JSON.stringify(service)} has projections; GET /api/v1/admin/projections lists them.`);
  }
  return { service, projection };
}

@Controller('api/v1/admin')
export class AdminController {
  constructor(private readonly rpc: RpcClient) {}

  @Get('projections')
  @Endpoint({ permission: P.platformOperate, tag: 'operations', summary: 'Every read model (and the ledger): checkpoint, lag, health and dead letters', response: 'ProjectionList' })
  async list(): Promise<{ items: (ProjectionStatus | { name: string; service: string; error: string })[] }> {
    const answers = await Promise.all(
      PROJECTION_SERVICES.map((service) =>
        this.rpc.request<{ items: ProjectionStatus[] }>(projectionSubjects.list(service), {}).then(
          (r) => r.items,
          (error: Error) => [{ name: `${service}.*`, service, error: error.message }],
        ),
      ),
    );
    return { items: answers.flat() };
  }

  @Post('projections/:name/rebuild')
  @HttpCode(200)
  @Endpoint({
    permission: P.platformOperate, tag: 'operations', params: nameParams, response: 'ProjectionRebuildResult',
    summary: 'Rebuild a read model from the ledger beside the live one, then swap it in (reads go on meanwhile)',
  })
  async rebuild(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof nameParams>>): Promise<RebuildResult> {
    const { service, projection } = split(input.params.name);
    return this.rpc.request(projectionSubjects.rebuild(service), { meta: commandMeta(req), payload: { projection } }, 600_000);
  }

  @Get('projections/:name/dead-letters')
  @Endpoint({ permission: P.platformOperate, tag: 'operations', params: nameParams, query: lettersQuery, response: 'DeadLetterList', summary: 'Dead letters of a read model, oldest first' })
  async deadLetters(@Input() input: ValidInput<unknown, z.infer<typeof lettersQuery>, z.infer<typeof nameParams>>): Promise<{ items: DeadLetterInfo[] }> {
    const { service, projection } = split(input.params.name);
    return this.rpc.request(projectionSubjects.deadLetters(service), { projection, resolved: input.query.resolved === 'true', limit: input.query.limit });
  }

  @Post('projections/:name/dead-letters/:id/retry')
  @HttpCode(200)
  @Endpoint({ permission: P.platformOperate, tag: 'operations', params: letterParams, response: 'DeadLetter', summary: 'Apply a dead-lettered event again (after a fix); 409 with the reason if it still fails' })
  async retry(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof letterParams>>): Promise<DeadLetterInfo> {
    const { service, projection } = split(input.params.name);
    return this.rpc.request(projectionSubjects.retry(service), { meta: commandMeta(req), payload: { projection, id: input.params.id } });
  }

  @Post('projections/:name/dead-letters/:id/skip')
  @HttpCode(200)
  @Endpoint({ permission: P.platformOperate, tag: 'operations', params: letterParams, response: 'DeadLetter', summary: 'Give a dead letter up; the skip is recorded as an event with you as its actor' })
  async skip(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof letterParams>>): Promise<DeadLetterInfo> {
    const { service, projection } = split(input.params.name);
    return this.rpc.request(projectionSubjects.skip(service), { meta: commandMeta(req), payload: { projection, id: input.params.id } });
  }

  /** Kept for existing callers: the same as `POST projections/tenant.tenants/rebuild`. */
  @Post('projections/tenants/rebuild')
  @HttpCode(200)
  @Endpoint({ permission: P.platformOperate, tag: 'operations', summary: 'Rebuild the tenant read model (same as projections/tenant.tenants/rebuild)', response: 'RebuildResult' })
  async rebuildTenants(@Req() req: KeelRequest): Promise<{ position: number }> {
    const r = await this.rpc.request<RebuildResult>(projectionSubjects.rebuild('tenant'), { meta: commandMeta(req), payload: { projection: 'tenants' } }, 600_000);
    return { position: r.position };
  }

  @Get('ledger/incidents')
  @Endpoint({ permission: P.platformOperate, tag: 'operations', query: incidentsQuery, response: 'LedgerPage', summary: 'Ledger entries that are not valid event envelopes (each one an incident), oldest first' })
  async incidents(@Input() input: ValidInput<unknown, z.infer<typeof incidentsQuery>>): Promise<Page<LedgerEntry>> {
    return this.rpc.request('qry.audit.incidents', input.query);
  }
}
