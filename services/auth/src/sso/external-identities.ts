import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { CommandMeta, IdentityProvider, KeelError, newEventId, rolesGrantedBy, ssoEventTypes as E } from '@keel/contracts';
import { inTenant, tenantQuery } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { ProjectionRunner } from '@keel/projections';
import { AUTH_SCHEMA } from '../database/schema';
import { RbacService } from '../rbac/rbac.service';
import { lacking, permissionsOf } from '../rbac/authority';
import { RoleCatalog } from '../rbac/role-catalog';
import { AuthMeta, UsersService } from '../users/users.service';
import { MappedIdentity, TeamRole, teamRoleKey } from './claim-mapping';

const S = `"${AUTH_SCHEMA}"`;
/** How long a first sign-in waits for the new user to reach the users read model (team grants need it). */
const READ_MODEL_WAIT_MS = 3_000;

export interface Link {
  linkId: string;
  userId: string;
}

/**
 * Links a provider's subjects to Keel users: a first sign-in provisions the user (or links the
 * tenant's user with that email when the provider vouches it is verified); every sign-in makes
 * the user's roles and team-scope grants match what the provider's groups map to.
 */
@Injectable()
export class ExternalIdentities {
  constructor(
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly users: UsersService,
    private readonly rbac: RbacService,
    private readonly usersReadModel: ProjectionRunner,
    private readonly outbox: Outbox,
    private readonly catalog: RoleCatalog,
  ) {}

  /**
   * The user this external identity signs in as: linked before, or linked now. `byProvider`
   * acts for the provider (user provisioning); `asUser(userId)` for the person (the link).
   */
  async link(tenantId: string, provider: IdentityProvider, identity: MappedIdentity, byProvider: AuthMeta, asUser: (userId: string) => CommandMeta): Promise<Link> {
    const [linked] = await tenantQuery(this.ds, tenantId, `SELECT id, user_id FROM ${S}.external_identities WHERE provider_id = $1 AND subject = $2`, [provider.id, identity.subject]);
    if (linked) return { linkId: linked.id, userId: linked.user_id };
    const { userId, provisionedAt } = await this.accountFor(tenantId, provider, identity, byProvider);
    const linkId = newEventId();
    const won = await inTenant(this.ds, tenantId, async (m) => {
      const inserted = await m.query(
        `INSERT INTO ${S}.external_identities (id, provider_id, subject, tenant_id, user_id, version) VALUES ($1, $2, $3, $4, $5, 1)
         ON CONFLICT (provider_id, subject) DO NOTHING RETURNING id`,
        [linkId, provider.id, identity.subject, tenantId, userId],
      );
      if (!inserted.length) return null;
      const event = {
        tenantId, aggregateType: 'external_identity', aggregateId: linkId, version: 1,
        type: E.identityLinked, data: { providerId: provider.id, userId, provisioned: provisionedAt !== undefined },
      };
      return this.outbox.record(m, [event], asUser(userId));
    });
    // A concurrent first sign-in of the same person linked it a moment ago: use that link.
    if (!won) return this.link(tenantId, provider, identity, byProvider, asUser);
    await this.outbox.sent(won);
    // Team grants and token refreshes read the users read model: a new user must be there first.
    if (provisionedAt !== undefined) await this.usersReadModel.waitFor(provisionedAt, READ_MODEL_WAIT_MS);
    return { linkId, userId };
  }

  /**
   * The account for a first sign-in: a new user with the mapped roles (the plan's maxUsers
   * applies), or the tenant's user with that email, when the provider vouches the email is
   * verified (else whoever can set an email at the provider could take the account over).
   * `provisionedAt` is the log position of a user made now.
   */
  private async accountFor(tenantId: string, provider: IdentityProvider, identity: MappedIdentity, byProvider: AuthMeta, retried = false): Promise<{ userId: string; provisionedAt?: number }> {
    const [existing] = await tenantQuery(this.ds, tenantId, `SELECT user_id FROM ${S}.email_reservations WHERE tenant_id = $1 AND email = $2`, [tenantId, identity.email]);
    if (existing) {
      if (!identity.emailVerified) {
        throw new KeelError('conflict', 'A Keel account with this email exists, and the identity provider does not confirm the email is verified, so it was not linked; ask your administrator to have the provider send email_verified.');
      }
      // A provider may take over only accounts it could have made: whoever configured it held
      // the roles its mapping grants, and no more (else it is a way into an administrator's account).
      const catalog = await this.catalog.roles(tenantId);
      const mappable = [...permissionsOf(catalog, rolesGrantedBy(provider.mapping))];
      const held = permissionsOf(catalog, await this.users.heldRoles(tenantId, existing.user_id));
      if (lacking(mappable, held).length) {
        throw new KeelError('forbidden', 'A Keel account with this email holds more than this identity provider may grant, so it was not linked; an administrator who holds those permissions must link it.');
      }
      return { userId: existing.user_id };
    }
    try {
      const created = await this.users.createUser(tenantId, { email: identity.email, name: identity.name, roles: identity.roles }, byProvider, byProvider.permissions);
      return { userId: created.state.id, provisionedAt: created.position };
    } catch (error) {
      // The email was reserved a moment ago by a concurrent first sign-in: take the existing-user path.
      if (error instanceof KeelError && error.code === 'conflict' && !retried) return this.accountFor(tenantId, provider, identity, byProvider, true);
      throw error;
    }
  }

  /**
   * Makes the user's roles (when the provider has a role claim) and this link's team-scope
   * grants match the identity's groups, and answers both.
   */
  async applyGroups(tenantId: string, provider: IdentityProvider, link: Link, identity: MappedIdentity, byProvider: AuthMeta): Promise<{ roles: string[]; teamRoles: TeamRole[] }> {
    const user = await this.users.load(tenantId, link.userId);
    if (user.state.status !== 'active') throw new KeelError('forbidden', 'Your Keel account is disabled; ask your administrator to enable it.');
    let roles = user.state.roles;
    if (provider.mapping.roleClaim && roles.join() !== identity.roles.join()) {
      roles = (await this.users.setRolesBy(byProvider, tenantId, link.userId, identity.roles)).state.roles;
    }
    return { roles, teamRoles: await this.syncTeamRoles(tenantId, link, identity.teamRoles, byProvider) };
  }

  /**
   * Grants what the groups map to and this link does not hold yet; revokes what this link was
   * granted and the groups no longer map to. A grant the user already holds by hand stays
   * theirs (never revoked here); a team deleted since the mapping was saved is skipped.
   */
  private async syncTeamRoles(tenantId: string, link: Link, wanted: TeamRole[], byProvider: AuthMeta): Promise<TeamRole[]> {
    const held: { assignment_id: string; team_id: string | null; role: string | null }[] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT g.assignment_id, a.team_id, a.role FROM ${S}.external_identity_grants g
       LEFT JOIN ${S}.role_assignments a ON a.id = g.assignment_id WHERE g.link_id = $1`,
      [link.linkId],
    );
    const wantedKeys = new Set(wanted.map(teamRoleKey));
    const holding = new Set<string>();
    for (const h of held) {
      const key = h.team_id && h.role ? teamRoleKey({ teamId: h.team_id, role: h.role }) : null;
      if (key && wantedKeys.has(key)) {
        holding.add(key);
        continue;
      }
      // Revoked by hand meanwhile (no assignment left), or no longer mapped: either way not held.
      if (key) await this.rbac.revokeAssignment({ meta: byProvider, payload: { tenantId, assignmentId: h.assignment_id } });
      await tenantQuery(this.ds, tenantId, `DELETE FROM ${S}.external_identity_grants WHERE link_id = $1 AND assignment_id = $2`, [link.linkId, h.assignment_id]);
    }
    for (const t of wanted.filter((w) => !holding.has(teamRoleKey(w)))) {
      try {
        const granted = await this.rbac.grant({ meta: byProvider, payload: { tenantId, data: { userId: link.userId, role: t.role, teamId: t.teamId } } });
        await tenantQuery(this.ds, tenantId, `INSERT INTO ${S}.external_identity_grants (link_id, assignment_id, tenant_id) VALUES ($1, $2, $3)`, [link.linkId, granted.id, tenantId]);
        holding.add(teamRoleKey(t));
      } catch (error) {
        if (!(error instanceof KeelError) || !['conflict', 'validation_failed'].includes(error.code)) throw error;
        if (error.code === 'conflict') holding.add(teamRoleKey(t));
      }
    }
    return wanted.filter((w) => holding.has(teamRoleKey(w)));
  }

  /** Records a completed sign-in on the link, with the access it carries. */
  async recordSignIn(tenantId: string, provider: IdentityProvider, link: Link, access: { roles: string[]; teamRoles: TeamRole[] }, asUser: CommandMeta): Promise<void> {
    const receipt = await inTenant(this.ds, tenantId, async (m) => {
      const [rows] = await m.query(`UPDATE ${S}.external_identities SET last_sign_in_at = now(), version = version + 1 WHERE id = $1 RETURNING version`, [link.linkId]);
      // The provider (and its links) was deleted meanwhile: nothing to record on.
      if (!rows.length) throw new KeelError('not_found', 'No such identity provider for this tenant.');
      const event = {
        tenantId, aggregateType: 'external_identity', aggregateId: link.linkId, version: rows[0].version,
        type: E.signedIn, data: { providerId: provider.id, userId: link.userId, ...access },
      };
      return this.outbox.record(m, [event], asUser);
    });
    await this.outbox.sent(receipt);
  }
}
