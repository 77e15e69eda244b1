import { Controller, Delete, Get, HttpCode, Patch, Post, Put, Req, Res } from '@nestjs/common';
import { FastifyReply } from 'fastify';
import { z } from 'zod';
import { customRoleSchema, permissions as P, roleAssignmentSchema, roleNameSchema, teamSchema, updateRoleSchema, updateTeamSchema } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { authMeta, KeelRequest } from '../http/request-context';

const tenantParams = z.object({ tenantId: z.uuid() }).strict();
const roleParams = tenantParams.extend({ name: roleNameSchema }).strict();
const teamParams = tenantParams.extend({ teamId: z.uuid() }).strict();
const assignmentParams = tenantParams.extend({ assignmentId: z.uuid() }).strict();
const assignmentsQuery = z.object({ userId: z.uuid().optional() }).strict();
const matrixQuery = z.object({ format: z.enum(['json', 'csv']).default('json') }).strict();

interface Matrix {
  permissions: string[];
  roles: { name: string; system: boolean; permissions: string[] }[];
  users: { id: string; email: string; scope: string; teamName?: string; permissions: string[] }[];
}

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

type T = z.infer<typeof tenantParams>;

/** Roles, teams, role assignments and the permission matrix of one tenant. */
@Controller('api/v1/tenants/:tenantId')
export class RbacController {
  constructor(private readonly rpc: RpcClient) {}

  private cmd(name: string, req: KeelRequest, payload: object) {
    return this.rpc.request(`cmd.auth.${name}`, { meta: authMeta(req), payload });
  }

  @Get('roles')
  @Endpoint({ permission: P.rolesRead, tenantParam: 'tenantId', tag: 'roles', summary: 'System and custom roles with their permissions', params: tenantParams })
  async roles(@Input() input: ValidInput<unknown, unknown, T>) {
    return this.rpc.request('qry.auth.roles', input.params);
  }

  @Post('roles')
  @HttpCode(201)
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'roles', summary: 'Create a custom role (only permissions you hold)', params: tenantParams, body: customRoleSchema, status: 201 })
  async createRole(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, T>) {
    return this.cmd('create_role', req, { tenantId: input.params.tenantId, data: input.body });
  }

  @Put('roles/:name')
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'roles', summary: 'Change a custom role', params: roleParams, body: updateRoleSchema })
  async updateRole(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof roleParams>>) {
    return this.cmd('update_role', req, { ...input.params, data: input.body });
  }

  @Delete('roles/:name')
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'roles', summary: 'Delete a custom role nobody holds', params: roleParams })
  async deleteRole(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof roleParams>>) {
    return this.cmd('delete_role', req, input.params);
  }

  @Get('teams')
  @Endpoint({ permission: P.usersRead, tenantParam: 'tenantId', tag: 'teams', summary: 'Teams (each with its optional parent)', params: tenantParams })
  async teams(@Input() input: ValidInput<unknown, unknown, T>) {
    return this.rpc.request('qry.auth.teams', input.params);
  }

  @Post('teams')
  @HttpCode(201)
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'teams', summary: 'Create a team, optionally below another', params: tenantParams, body: teamSchema, status: 201 })
  async createTeam(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, T>) {
    return this.cmd('create_team', req, { tenantId: input.params.tenantId, data: input.body });
  }

  @Patch('teams/:teamId')
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'teams', summary: 'Rename or move a team (never below itself)', params: teamParams, body: updateTeamSchema })
  async updateTeam(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof teamParams>>) {
    return this.cmd('update_team', req, { ...input.params, data: input.body });
  }

  @Delete('teams/:teamId')
  @Endpoint({ permission: P.usersWrite, tenantParam: 'tenantId', tag: 'teams', summary: 'Delete a team without sub-teams or assignments', params: teamParams })
  async deleteTeam(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof teamParams>>) {
    return this.cmd('delete_team', req, input.params);
  }

  @Get('role-assignments')
  @Endpoint({ permission: P.rolesRead, tenantParam: 'tenantId', tag: 'roles', summary: 'Role assignments (tenant or team scope)', params: tenantParams, query: assignmentsQuery })
  async assignments(@Input() input: ValidInput<unknown, z.infer<typeof assignmentsQuery>, T>) {
    return this.rpc.request('qry.auth.role_assignments', { ...input.params, ...input.query });
  }

  @Post('role-assignments')
  @HttpCode(201)
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'roles', summary: 'Grant a role at tenant scope, or at a team (and its sub-teams)', params: tenantParams, body: roleAssignmentSchema, status: 201 })
  async grant(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, T>) {
    return this.cmd('grant_role', req, { tenantId: input.params.tenantId, data: input.body });
  }

  @Delete('role-assignments/:assignmentId')
  @Endpoint({ permission: P.rolesWrite, tenantParam: 'tenantId', tag: 'roles', summary: 'Take a role assignment away', params: assignmentParams })
  async revoke(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, unknown, z.infer<typeof assignmentParams>>) {
    return this.cmd('revoke_role_assignment', req, input.params);
  }

  @Get('permission-matrix')
  @Endpoint({ permission: P.rolesRead, tenantParam: 'tenantId', tag: 'roles', summary: 'Roles × permissions and users × effective permissions (format=csv for a spreadsheet)', params: tenantParams, query: matrixQuery })
  async matrix(@Res({ passthrough: true }) reply: FastifyReply, @Input() input: ValidInput<unknown, z.infer<typeof matrixQuery>, T>) {
    const matrix = await this.rpc.request<Matrix>('qry.auth.permission_matrix', input.params);
    if (input.query.format !== 'csv') return matrix;
    void reply.type('text/csv; charset=utf-8').header('content-disposition', 'attachment; filename="permission-matrix.csv"');
    return matrixCsv(matrix);
  }
}
