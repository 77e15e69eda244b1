import { Controller, Get, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { queries, RouteInput, routes, RpcResponse } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';

const r = routes.rbac;
const Q = queries.auth;

type Matrix = RpcResponse<typeof queries.auth.permissionMatrix>;

const csvField = (v: string) => (/[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);

/** One CSV: a row per role and per user scope, a column per permission ("x" where held). */
function matrixCsv(m: Matrix): string {
  const header = ['kind', 'name', 'scope', ...m.permissions];
  const row = (kind: string, name: string, scope: string, held: string[]) => {
    const set = new Set(held);
    return [kind, name, scope, ...m.permissions.map((p) => (set.has(p) ? 'x' : ''))].map(csvField).join(',');
  };
  return [
    header.map(csvField).join(','),
    ...m.roles.map((r) => row(r.system ? 'system role' : 'custom role', r.name, '', r.permissions)),
    ...m.users.map((u) => row('user', u.email, u.scope === 'tenant' ? 'tenant' : `team:${u.teamName}`, u.permissions)),
  ].join('\n') + '\n';
}

/**
 * The permission matrix of one tenant, as JSON or CSV. (Roles, teams and role assignments are
 * plain forwards, declared with `forward` in libs/contracts and served by the gateway itself.)
 */
@Controller('api/v1/tenants/:tenantId')
export class RbacController {
  constructor(private readonly rpc: TypedRpc) {}

  @Get('permission-matrix')
  @Endpoint(r.matrix)
  async matrix(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.matrix>): Promise<Matrix | string> {
    const matrix = await this.rpc.call(Q.permissionMatrix, input.params);
    if (input.query.format !== 'csv') return matrix;
    void reply.type('text/csv; charset=utf-8').header('content-disposition', 'attachment; filename="permission-matrix.csv"');
    return matrixCsv(matrix);
  }
}
