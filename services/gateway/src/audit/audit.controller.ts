import { Controller, Get, Req } from '@nestjs/common';
import { KeelError, queries, RouteInput, RouteOutput, routes } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { KeelRequest } from '../http/request-context';

const r = routes.audit;
const Q = queries.audit;

@Controller('api/v1/audit')
export class AuditController {
  constructor(private readonly rpc: TypedRpc) {}

  @Get('events')
  @Endpoint(r.events)
  async events(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.events>): Promise<RouteOutput<typeof r.events>> {
    const p = req.principal!;
    // Outside the platform, a caller reads its own tenant's trail only.
    if (!p.crossTenant) {
      if (input.query.tenantId && input.query.tenantId !== p.tenantId) throw new KeelError('not_found', 'No such tenant in your scope.');
      return this.rpc.call(Q.events, { ...input.query, tenantId: p.tenantId });
    }
    return this.rpc.call(Q.events, input.query);
  }

  @Get('checkpoints')
  @Endpoint(r.checkpoints)
  async checkpoints(@Input() input: RouteInput<typeof r.checkpoints>): Promise<RouteOutput<typeof r.checkpoints>> {
    return this.rpc.call(Q.checkpoints, input.query);
  }

  @Get('keys')
  @Endpoint(r.keys)
  async keys(): Promise<RouteOutput<typeof r.keys>> {
    return this.rpc.call(Q.keys, {});
  }

  @Get('verify')
  @Endpoint(r.verify)
  async verify(@Input() input: RouteInput<typeof r.verify>): Promise<RouteOutput<typeof r.verify>> {
    // Verifying a long ledger takes a while: the declaration gives it more than a normal request.
    return this.rpc.call(Q.verify, input.query);
  }
}
