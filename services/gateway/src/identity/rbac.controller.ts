import { Controller, Delete, Get, HttpCode, Patch, Post, Put, Req, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { commands, queries, RouteInput, RouteOutput, routes, RpcResponse } from '@keel/contracts';
import { TypedRpc } from '@keel/messaging';
import { Endpoint, Input } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';

const r = routes.rbac;
const C = commands.auth;
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

/** Roles, teams, role assignments and the permission matrix of one tenant. */
@Controller('api/v1/tenants/:tenantId')
export class RbacController {
  constructor(private readonly rpc: TypedRpc) {}

  @Get('roles')
  @Endpoint(r.roles)
  async roles(@Input() input: RouteInput<typeof r.roles>): Promise<RouteOutput<typeof r.roles>> {
    return this.rpc.call(Q.roles, input.params);
  }

  @Post('roles')
  @HttpCode(201)
  @Endpoint(r.createRole)
  async createRole(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.createRole>): Promise<RouteOutput<typeof r.createRole>> {
    return this.rpc.call(C.createRole, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
  }

  @Put('roles/:name')
  @Endpoint(r.updateRole)
  async updateRole(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.updateRole>): Promise<RouteOutput<typeof r.updateRole>> {
    return this.rpc.call(C.updateRole, { meta: authMeta(req), payload: { ...input.params, data: input.body } });
  }

  @Delete('roles/:name')
  @Endpoint(r.deleteRole)
  async deleteRole(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.deleteRole>): Promise<RouteOutput<typeof r.deleteRole>> {
    return this.rpc.call(C.deleteRole, { meta: authMeta(req), payload: input.params });
  }

  @Get('teams')
  @Endpoint(r.teams)
  async teams(@Input() input: RouteInput<typeof r.teams>): Promise<RouteOutput<typeof r.teams>> {
    return this.rpc.call(Q.teams, input.params);
  }

  @Post('teams')
  @HttpCode(201)
  @Endpoint(r.createTeam)
  async createTeam(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.createTeam>): Promise<RouteOutput<typeof r.createTeam>> {
    return this.rpc.call(C.createTeam, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
  }

  @Patch('teams/:teamId')
  @Endpoint(r.updateTeam)
  async updateTeam(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.updateTeam>): Promise<RouteOutput<typeof r.updateTeam>> {
    return this.rpc.call(C.updateTeam, { meta: authMeta(req), payload: { ...input.params, data: input.body } });
  }

  @Delete('teams/:teamId')
  @Endpoint(r.deleteTeam)
  async deleteTeam(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.deleteTeam>): Promise<RouteOutput<typeof r.deleteTeam>> {
    return this.rpc.call(C.deleteTeam, { meta: authMeta(req), payload: input.params });
  }

  @Get('role-assignments')
  @Endpoint(r.assignments)
  async assignments(@Input() input: RouteInput<typeof r.assignments>): Promise<RouteOutput<typeof r.assignments>> {
    return this.rpc.call(Q.roleAssignments, { ...input.params, ...input.query });
  }

  @Post('role-assignments')
  @HttpCode(201)
  @Endpoint(r.grant)
  async grant(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.grant>): Promise<RouteOutput<typeof r.grant>> {
    return this.rpc.call(C.grantRole, { meta: authMeta(req), payload: { tenantId: input.params.tenantId, data: input.body } });
  }

  @Delete('role-assignments/:assignmentId')
  @Endpoint(r.revoke)
  async revoke(@Req() req: KeelRequest, @Input() input: RouteInput<typeof r.revoke>): Promise<RouteOutput<typeof r.revoke>> {
    return this.rpc.call(C.revokeRoleAssignment, { meta: authMeta(req), payload: input.params });
  }

  @Get('permission-matrix')
  @Endpoint(r.matrix)
  async matrix(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: RouteInput<typeof r.matrix>): Promise<Matrix | string> {
    const matrix = await this.rpc.call(Q.permissionMatrix, input.params);
    if (input.query.format !== 'csv') return matrix;
    void reply.type('text/csv; charset=utf-8').header('content-disposition', 'attachment; filename="permission-matrix.csv"');
    return matrixCsv(matrix);
  }
}
