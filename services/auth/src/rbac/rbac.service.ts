import { Inject, Injectable, OnModuleDestroy, OnModuleInit, Optional } from '@nestjs/common';
import { DataSource, EntityManager } from 'typeorm';
import { Subscription } from 'nats';
import { allPermissions, authEventTypes as A, authRpc, KeelError, newEventId, parseOrThrow, systemRoles } from '@keel/contracts';
import { inTenant } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { decodeJson, eventsOf, MESSAGING, Messaging, MessagePattern } from '@keel/messaging';
import { ProjectionRunner } from '@keel/projections';
import { AUTH_SCHEMA } from '../database/schema';
import { AuthMeta, UsersService } from '../users/users.service';
import { requireGrantable } from './authority';
import { roleDecider, RoleCommand, RoleEvent, RoleState } from './role.decider';
import { RoleCatalog } from './role-catalog';

const S = `"${AUTH_SCHEMA}"`;
const READ_MODEL_WAIT_MS = 3_000;
// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  createRole: authRpc.createRole.request,
  updateRole: authRpc.updateRole.request,
  deleteRole: authRpc.deleteRole.request,
  roles: authRpc.roles.request,
  createTeam: authRpc.createTeam.request,
  updateTeam: authRpc.updateTeam.request,
  deleteTeam: authRpc.deleteTeam.request,
  teams: authRpc.teams.request,
  grant: authRpc.grantRole.request,
  revoke: authRpc.revokeRoleAssignment.request,
  assignments: authRpc.roleAssignments.request,
  matrix: authRpc.permissionMatrix.request,
};

interface Team {
  id: string;
  name: string;
  parentId: string | null;
}

export interface PermissionMatrix {
  permissions: readonly string[];
  roles: { name: string; system: boolean; permissions: string[] }[];
  users: { id: string; email: string; scope: string; teamName?: string; permissions: string[] }[];
}

/**
 * Custom roles, teams (a hierarchy) and role assignments at tenant or team scope. A team-scope
 * grant applies to that team and every team below it.
 */
@Injectable()
export class RbacService implements OnModuleInit, OnModuleDestroy {
  private roleEvents?: Subscription;

  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly outbox: Outbox,
    private readonly catalog: RoleCatalog,
    private readonly users: UsersService,
    private readonly usersReadModel: ProjectionRunner,
    @Optional() @Inject(MESSAGING) private readonly m?: Messaging,
  ) {}

  /**
   * A custom role changed on another replica: forget this replica's copy of the tenant's roles at
   * once (not when its cache lets go), so a refresh here issues the new permissions; gateways
   * refuse the role's tokens issued before the change.
   */
  onModuleInit(): void {
    this.roleEvents = this.m?.nc.subscribe(`${this.m.prefix}evt.*.auth.role.>`, {
      callback: (err, msg) => {
        if (err) return;
        try {
          for (const e of eventsOf(decodeJson<unknown>(msg.data))) this.catalog.invalidate(e.tenantId);
        } catch {
          // Not an envelope: nothing to forget.
        }
      },
    });
  }

  onModuleDestroy(): void {
    this.roleEvents?.unsubscribe();
  }

  /**
   * Decides a command on a custom role and applies it, in one transaction: the row is read under a
   * lock on the role's name (its state), the role decider decides, the row is written as the
   * events say and the events are recorded in the outbox. A role is deleted and can be made again
   * under its name: its version lives on in the outbox's version table, past the row.
   */
  private async decideRole(tenantId: string, name: string, meta: AuthMeta, command: (m: EntityManager) => Promise<RoleCommand> | RoleCommand): Promise<number> {
    let changed = false;
    const receipt = await inTenant(this.ds, tenantId, async (m) => {
      await m.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`keel.auth.role.${tenantId}.${name}`]);
      const [row] = await m.query(`SELECT description, permissions FROM ${S}.roles WHERE tenant_id = $1 AND name = $2 FOR UPDATE`, [tenantId, name]);
      const state: RoleState = row ? { status: 'custom', description: row.description, permissions: row.permissions } : { status: 'none' };
      const events = roleDecider.decide(await command(m), state);
      changed = events.some((e) => e.type === A.roleUpdated || e.type === A.roleDeleted);
      for (const event of events) await this.applyRole(m, tenantId, name, event);
      const first = await this.outbox.nextVersion(m, { tenantId, aggregateType: 'role', aggregateId: name }, events.length);
      return this.outbox.record(m, events.map((e, i) => ({ tenantId, aggregateType: 'role', aggregateId: name, version: first + i, type: e.type, data: e.data })), meta);
    });
    this.catalog.invalidate(tenantId);
    const { position } = await this.outbox.sent(receipt);
    // Its holders' tokens issued before are refused at every gateway (by the event, and Redis).
    if (changed) await this.users.accessChanged([{ tenantId, role: name }]);
    return position;
  }

  /** The row as a role event leaves it. */
  private async applyRole(m: EntityManager, tenantId: string, name: string, event: RoleEvent): Promise<void> {
    switch (event.type) {
      case A.roleCreated:
        await m.query(`INSERT INTO ${S}.roles (tenant_id, name, description, permissions) VALUES ($1, $2, $3, $4)`, [tenantId, name, event.data.description, event.data.permissions]);
        return;
      case A.roleUpdated:
        await m.query(`UPDATE ${S}.roles SET description = $3, permissions = $4, updated_at = now() WHERE tenant_id = $1 AND name = $2`, [tenantId, name, event.data.description, event.data.permissions]);
        return;
      case A.roleDeleted:
        await m.query(`DELETE FROM ${S}.roles WHERE tenant_id = $1 AND name = $2`, [tenantId, name]);
        return;
      default: {
        const _exhaustive: never = event;
        throw new Error(`unhandled role event ${(_exhaustive as RoleEvent).type}`);
      }
    }
  }

  @MessagePattern(authRpc.createRole.subject)
  async createRole(body: unknown) {
    const { meta, payload } = parseOrThrow(requests.createRole, body, 'role');
    const { name, description, permissions } = payload.data;
    const position = await this.decideRole(payload.tenantId, name, meta, () => ({ type: 'create', name, data: { description, permissions }, held: meta.permissions }));
    return { name, description, permissions, system: false, position };
  }

  @MessagePattern(authRpc.updateRole.subject)
  async updateRole(body: unknown) {
    const { meta, payload } = parseOrThrow(requests.updateRole, body, 'role');
    const { description, permissions } = payload.data;
    const position = await this.decideRole(payload.tenantId, payload.name, meta, () => ({ type: 'update', name: payload.name, data: { description, permissions }, held: meta.permissions }));
    return { name: payload.name, description, permissions, system: false, position };
  }

  @MessagePattern(authRpc.deleteRole.subject)
  async deleteRole(body: unknown): Promise<{ deleted: true; position: number }> {
    const { meta, payload } = parseOrThrow(requests.deleteRole, body, 'role');
    // Holders are counted in the users read model: bring it up to date first, so a user created
    // with this role a moment ago counts.
    await this.usersReadModel.catchUp(READ_MODEL_WAIT_MS);
    const position = await this.decideRole(payload.tenantId, payload.name, meta, async (m) => {
      const [use] = await m.query(
        `SELECT (SELECT count(*) FROM ${S}.users WHERE tenant_id = $1 AND $2 = ANY(roles))
              + (SELECT count(*) FROM ${S}.role_assignments WHERE tenant_id = $1 AND role = $2) AS n`,
        [payload.tenantId, payload.name],
      );
      return { type: 'delete', name: payload.name, holders: Number(use.n) };
    });
    return { deleted: true, position };
  }

  @MessagePattern(authRpc.roles.subject)
  async roles(body: unknown) {
    const { tenantId: t } = parseOrThrow(requests.roles, body, 'role listing');
    const catalog = await this.catalog.roles(t);
    return {
      items: [...catalog].map(([name, permissions]) => ({ name, system: name in systemRoles, permissions })),
    };
  }

  private async teams(m: EntityManager, tenant: string): Promise<Team[]> {
    const rows = await m.query(`SELECT id, name, parent_id FROM ${S}.teams WHERE tenant_id = $1 ORDER BY created_at`, [tenant]);
    return rows.map((r: { id: string; name: string; parent_id: string | null }) => ({ id: r.id, name: r.name, parentId: r.parent_id }));
  }

  @MessagePattern(authRpc.createTeam.subject)
  async createTeam(body: unknown): Promise<Team & { position: number }> {
    const { meta, payload } = parseOrThrow(requests.createTeam, body, 'team');
    const id = newEventId();
    const receipt = await inTenant(this.ds, payload.tenantId, async (m) => {
      const teams = await this.teams(m, payload.tenantId);
      if (payload.data.parentId && !teams.some((t) => t.id === payload.data.parentId)) {
        throw new KeelError('validation_failed', 'The parent team is not in this tenant.', [{ field: 'parentId', message: 'no such team' }]);
      }
      await m.query(`INSERT INTO ${S}.teams (id, tenant_id, name, parent_id, version) VALUES ($1, $2, $3, $4, 1)`, [id, payload.tenantId, payload.data.name, payload.data.parentId]);
      return this.outbox.record(m, [{ tenantId: payload.tenantId, aggregateType: 'team', aggregateId: id, version: 1, type: A.teamCreated, data: payload.data }], meta);
    });
    const { position } = await this.outbox.sent(receipt);
    return { id, name: payload.data.name, parentId: payload.data.parentId, position };
  }

  @MessagePattern(authRpc.updateTeam.subject)
  async updateTeam(body: unknown): Promise<Team & { position: number }> {
    const { meta, payload } = parseOrThrow(requests.updateTeam, body, 'team');
    const { team, receipt } = await inTenant(this.ds, payload.tenantId, async (m) => {
      const teams = await this.teams(m, payload.tenantId);
      const team = teams.find((t) => t.id === payload.teamId);
      if (!team) throw new KeelError('not_found', 'No such team in this tenant.');
      const parentId = payload.data.parentId === undefined ? team.parentId : payload.data.parentId;
      // A team cannot move below itself: walk up from the new parent.
      for (let p = parentId; p; p = teams.find((t) => t.id === p)?.parentId ?? null) {
        if (!teams.some((t) => t.id === p)) throw new KeelError('validation_failed', 'The parent team is not in this tenant.', [{ field: 'parentId', message: 'no such team' }]);
        if (p === team.id) throw new KeelError('conflict', 'A team cannot be moved below itself or its own sub-teams.');
      }
      const name = payload.data.name ?? team.name;
      const [[row]] = await m.query(`UPDATE ${S}.teams SET name = $2, parent_id = $3, version = version + 1 WHERE id = $1 RETURNING version`, [team.id, name, parentId]);
      const event = { tenantId: payload.tenantId, aggregateType: 'team', aggregateId: team.id, version: row.version, type: A.teamUpdated, data: { name, parentId } };
      return { team: { id: team.id, name, parentId }, receipt: await this.outbox.record(m, [event], meta) };
    });
    const { position } = await this.outbox.sent(receipt);
    return { ...team, position };
  }

  @MessagePattern(authRpc.deleteTeam.subject)
  async deleteTeam(body: unknown): Promise<{ deleted: true; position: number }> {
    const { meta, payload } = parseOrThrow(requests.deleteTeam, body, 'team');
    const receipt = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [use] = await m.query(
        `SELECT (SELECT count(*) FROM ${S}.teams WHERE parent_id = $1) + (SELECT count(*) FROM ${S}.role_assignments WHERE team_id = $1) AS n`,
        [payload.teamId],
      );
      if (Number(use.n) > 0) throw new KeelError('conflict', 'The team still has sub-teams or role assignments; remove them first.');
      const [rows] = await m.query(`DELETE FROM ${S}.teams WHERE id = $1 AND tenant_id = $2 RETURNING id, version`, [payload.teamId, payload.tenantId]);
      if (!rows.length) throw new KeelError('not_found', 'No such team in this tenant.');
      const event = { tenantId: payload.tenantId, aggregateType: 'team', aggregateId: payload.teamId, version: rows[0].version + 1, type: A.teamDeleted, data: {} };
      return this.outbox.record(m, [event], meta);
    });
    const { position } = await this.outbox.sent(receipt);
    return { deleted: true, position };
  }

  @MessagePattern(authRpc.teams.subject)
  async listTeams(body: unknown): Promise<{ items: Team[] }> {
    const q = parseOrThrow(requests.teams, body, 'team listing');
    return { items: await inTenant(this.ds, q.tenantId, (m) => this.teams(m, q.tenantId)) };
  }

  @MessagePattern(authRpc.grantRole.subject)
  async grant(body: unknown) {
    const { meta, payload } = parseOrThrow(requests.grant, body, 'role assignment');
    const { userId, role, teamId } = payload.data;
    requireGrantable(meta.permissions, await this.catalog.roles(payload.tenantId), [role]);
    // The user's own log, not the users read model: a user created a moment ago may not be
    // projected yet, and a grant right after creation is the common case.
    await this.users.load(payload.tenantId, userId).catch((error: unknown) => {
      if (error instanceof KeelError && error.code === 'not_found') {
        throw new KeelError('validation_failed', 'No such user in this tenant.', [{ field: 'userId', message: 'no such user' }]);
      }
      throw error;
    });
    const id = newEventId();
    const receipt = await inTenant(this.ds, payload.tenantId, async (m) => {
      if (teamId && !(await this.teams(m, payload.tenantId)).some((t) => t.id === teamId)) {
        throw new KeelError('validation_failed', 'No such team in this tenant.', [{ field: 'teamId', message: 'no such team' }]);
      }
      const inserted = await m.query(
        `INSERT INTO ${S}.role_assignments (id, tenant_id, user_id, role, team_id, version) VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING RETURNING id`,
        [id, payload.tenantId, userId, role, teamId ?? null],
      );
      if (!inserted.length) throw new KeelError('conflict', 'This role is already granted to this user at this scope.');
      const event = { tenantId: payload.tenantId, aggregateType: 'role_assignment', aggregateId: id, version: 1, type: A.roleGranted, data: { userId, role, ...(teamId ? { teamId } : {}) } };
      return this.outbox.record(m, [event], meta);
    });
    const { position } = await this.outbox.sent(receipt);
    // Tokens carry tenant-scope grants: the user's tokens issued before are refused, so a refresh brings the grant.
    if (!teamId) await this.users.accessChanged([{ user: userId }]);
    return { id, userId, role, teamId: teamId ?? null, position };
  }

  @MessagePattern(authRpc.revokeRoleAssignment.subject)
  async revokeAssignment(body: unknown): Promise<{ revoked: true; position: number }> {
    const { meta, payload } = parseOrThrow(requests.revoke, body, 'role assignment');
    const receipt = await inTenant(this.ds, payload.tenantId, async (m) => {
      const [rows] = await m.query(
        `DELETE FROM ${S}.role_assignments WHERE id = $1 AND tenant_id = $2 RETURNING id, version, user_id, role, team_id`,
        [payload.assignmentId, payload.tenantId],
      );
      if (!rows.length) throw new KeelError('not_found', 'No such role assignment in this tenant.');
      const r = rows[0] as { version: number; user_id: string; role: string; team_id: string | null };
      // Whose grant it was, so that gateways can refuse the user's tokens that still carry it.
      const data = { userId: r.user_id, role: r.role, ...(r.team_id ? { teamId: r.team_id } : {}) };
      const event = { tenantId: payload.tenantId, aggregateType: 'role_assignment', aggregateId: payload.assignmentId, version: r.version + 1, type: A.roleRevoked, data };
      return { receipt: await this.outbox.record(m, [event], meta), grant: r };
    });
    const { position } = await this.outbox.sent(receipt.receipt);
    if (!receipt.grant.team_id) await this.users.accessChanged([{ user: receipt.grant.user_id }]);
    return { revoked: true, position };
  }

  @MessagePattern(authRpc.roleAssignments.subject)
  async assignments(body: unknown) {
    const q = parseOrThrow(requests.assignments, body, 'role assignments');
    const rows = await inTenant(this.ds, q.tenantId, (m) =>
      m.query(
        `SELECT id, user_id, role, team_id FROM ${S}.role_assignments WHERE tenant_id = $1 ${q.userId ? 'AND user_id = $2' : ''} ORDER BY created_at`,
        q.userId ? [q.tenantId, q.userId] : [q.tenantId],
      ),
    );
    return { items: rows.map((r: Record<string, string | null>) => ({ id: r.id, userId: r.user_id, role: r.role, teamId: r.team_id })) };
  }

  /**
   * Roles × permissions, and users × effective permissions: at tenant scope (the user's roles
   * and tenant-scope grants) and, where it adds to that, for each team (grants on the team or
   * any team above it).
   */
  @MessagePattern(authRpc.permissionMatrix.subject)
  async matrix(body: unknown): Promise<PermissionMatrix> {
    const { tenantId: t } = parseOrThrow(requests.matrix, body, 'permission matrix');
    // An access review: every user appended so far is in it, not only those projected (if the
    // read model is far behind, e.g. rebuilding, it answers with what it has rather than 503).
    await this.usersReadModel.catchUp(READ_MODEL_WAIT_MS).catch((error: unknown) => {
      if (!(error instanceof KeelError && error.code === 'consistency_timeout')) throw error;
    });
    return inTenant(this.ds, t, async (m) => {
      const catalog = await this.catalog.roles(t, m);
      const teams = await this.teams(m, t);
      const users: { id: string; email: string; roles: string[] }[] = await m.query(`SELECT id, email, roles FROM ${S}.users WHERE tenant_id = $1 ORDER BY email`, [t]);
      const grants: { user_id: string; role: string; team_id: string | null }[] = await m.query(`SELECT user_id, role, team_id FROM ${S}.role_assignments WHERE tenant_id = $1`, [t]);
      const perms = (roles: string[]) => [...new Set(roles.flatMap((r) => catalog.get(r) ?? []))].sort();
      const ancestors = (teamId: string): string[] => {
        const chain: string[] = [];
        for (let p: string | null = teamId; p; p = teams.find((x) => x.id === p)?.parentId ?? null) chain.push(p);
        return chain;
      };
      const rows: PermissionMatrix['users'] = [];
      for (const u of users) {
        const mine = grants.filter((g) => g.user_id === u.id);
        const tenantRoles = [...u.roles, ...mine.filter((g) => !g.team_id).map((g) => g.role)];
        const tenantPerms = perms(tenantRoles);
        rows.push({ id: u.id, email: u.email, scope: 'tenant', permissions: tenantPerms });
        for (const team of teams) {
          const chain = new Set(ancestors(team.id));
          const teamPerms = perms([...tenantRoles, ...mine.filter((g) => g.team_id && chain.has(g.team_id)).map((g) => g.role)]);
          if (teamPerms.length > tenantPerms.length) rows.push({ id: u.id, email: u.email, scope: team.id, teamName: team.name, permissions: teamPerms });
        }
      }
      return {
        permissions: allPermissions,
        roles: [...catalog].map(([name, permissions]) => ({ name, system: name in systemRoles, permissions: [...permissions].sort() })),
        users: rows,
      };
    });
  }
}
