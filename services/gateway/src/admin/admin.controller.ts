import { Controller, HttpCode, Post } from '@nestjs/common';
import { permissions as P } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint } from '../http/endpoint';

@Controller('api/v1/admin')
export class AdminController {
  constructor(private readonly rpc: RpcClient) {}

  @Post('projections/tenants/rebuild')
  @HttpCode(200)
  @Endpoint({ permission: P.platformOperate, tag: 'operations', summary: 'Drop the tenant read model and rebuild it from the ledger', response: 'RebuildResult' })
  async rebuildTenants(): Promise<{ position: number }> {
    return this.rpc.request('cmd.tenant.rebuild_read_model', {}, 300_000);
  }
}
