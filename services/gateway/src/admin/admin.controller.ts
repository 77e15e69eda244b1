import { Controller, Get, HttpCode, Post, Req } from '@nestjs/common';
import { KeelError, PROJECTION_SERVICES, projectionRpc, ProjectionService, RouteInput, RouteOutput, routes } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { commandMeta, KeelRequest } from '../http/request-context';

const r = routes.admin;

/** `tenant.tenants` → the tenant service's `tenants` projection; a service Keel does not have is 404. */
function split(name: string): { service: ProjectionService; projection: string } {
  const [service, projection] = name.split('.') as [string, string];
  if (!(PROJECTION_SERVICES as readonly string[]).includes(service)) {
    throw new KeelError('not_found', `No service ${JSON.stringify(service)} has projections; GET /api/v1/admin/projections lists them.`);
  }
  return { service: service as ProjectionService, projection };
}

/** The retry and skip subjects of a service's projections; the ledger has none (it keeps what it cannot read as incidents). */
function deadLetterOps(service: ProjectionService, name: string) {
  const ops = projectionRpc[service];
  if (!('retry' in ops)) throw new KeelError('not_found', `${name} has no dead letters: the ledger keeps what it cannot read as incidents (GET /api/v1/admin/ledger/incidents).`);
  return ops;
}

@Controller('api/v1/admin')
export class AdminController {
  constructor(private readonly rpc: TypedRpc) {}

  @Get('projections')
  @Endpoint(r.list)
  async list(): Promise<RouteOutput<typeof r.list>> {
    const answers = await Promise.all(
      PROJECTION_SERVICES.map((service) =>
        this.rpc.call(projectionRpc[service].projections, {}).then(
          (answer) => answer.items,
          (error: Error) => [{ name: `${service}.*`, service, error: error.message }],
        ),
      ),
    );
    return { items: answers.flat() };
  }

  @Post('projections/:name/rebuild')
  @HttpCode(200)
  @Endpoint(r.rebuild)
  async rebuild(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.rebuild>): Promise<RouteOutput<typeof r.rebuild>> {
    const { service, projection } = split(input.params.name);
    return this.rpc.call(projectionRpc[service].rebuild, { meta: commandMeta(req), payload: { projection } });
  }

  @Get('projections/:name/dead-letters')
  @Endpoint(r.deadLetters)
  async deadLetters(@Input() input: RouteInput<typeof r.deadLetters>): Promise<RouteOutput<typeof r.deadLetters>> {
    const { service, projection } = split(input.params.name);
    return this.rpc.call(projectionRpc[service].deadLetters, { projection, resolved: input.query.resolved === 'true', limit: input.query.limit });
  }

  @Post('projections/:name/dead-letters/:id/retry')
  @HttpCode(200)
  @Endpoint(r.retry)
  async retry(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.retry>): Promise<RouteOutput<typeof r.retry>> {
    const { service, projection } = split(input.params.name);
    return this.rpc.call(deadLetterOps(service, input.params.name).retry, { meta: commandMeta(req), payload: { projection, id: input.params.id } });
  }

  @Post('projections/:name/dead-letters/:id/skip')
  @HttpCode(200)
  @Endpoint(r.skip)
  async skip(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.skip>): Promise<RouteOutput<typeof r.skip>> {
    const { service, projection } = split(input.params.name);
    return this.rpc.call(deadLetterOps(service, input.params.name).skip, { meta: commandMeta(req), payload: { projection, id: input.params.id } });
  }

  /** Kept for existing callers: the same as `POST projections/tenant.tenants/rebuild`. */
  @Post('projections/tenants/rebuild')
  @HttpCode(200)
  @Endpoint(r.rebuildTenants)
  async rebuildTenants(@Req() req: KeelRequest): Promise<RouteOutput<typeof r.rebuildTenants>> {
    const rebuilt = await this.rpc.call(projectionRpc.tenant.rebuild, { meta: commandMeta(req), payload: { projection: 'tenants' } });
    return { position: rebuilt.position };
  }
}
