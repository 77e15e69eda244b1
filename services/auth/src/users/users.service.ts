import { Inject, Injectable, Optional } from '@nestjs/common';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import * as argon2 from 'argon2';
import { DataSource, EntityManager } from 'typeorm';
import { z } from 'zod';
import {
  AUTH_CONTEXT,
  authEventTypes as A,
  authMetaSchema,
  authRpc,
  CommandMeta,
  CommandResult,
  CurrentAccess,
  KeelError,
  newEventId,
  Page,
  parseOrThrow,
  User,
} from '@keel/contracts';
import { inTenant, tenantQuery } from '@keel/database';
import { aggregateIdFor, CommandHandler } from '@keel/event-sourcing';
import { EventStore, MessagePattern } from '@keel/messaging';
import { AccessChange, recordAccessChanges } from '../api-keys/access-changes';
import { AUTH_SCHEMA } from '../database/schema';
import { RoleCatalog } from '../rbac/role-catalog';
import { SessionRevoker } from '../sessions/session-revoker';
import { TenantLookup } from './tenant-lookup';
import { Held } from '../rbac/authority';
import { OverUser, UserCommand, userDecider, UserEvent, UserState } from './user.decider';

/** OWASP's Argon2id minimum (19 MiB, 2 passes, 1 lane): ~35 sign-ins/s per core here. */
export const ARGON2_OPTIONS = { type: argon2.argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;

/** Command metadata of every auth command, with what the caller holds (the contract's `authMetaSchema`). */
export type AuthMeta = z.infer<typeof authMetaSchema>;

// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  create: authRpc.createUser.request,
  status: authRpc.setUserStatus.request,
  roles: authRpc.setUserRoles.request,
  profile: authRpc.updateProfile.request,
  reset: authRpc.resetPassword.request,
  change: authRpc.changePassword.request,
  get: authRpc.user.request,
  list: authRpc.users.request,
};

/** The password change is on the log but its hash did not land: the old password still signs in. */
const passwordNotStored = () =>
  new KeelError('service_unavailable', 'The password change was recorded but the new password could not be stored; the old password still signs in. Set the password again.');

const emailInUse = () => new KeelError('conflict', 'A user with this email already exists in this tenant.', [{ field: 'email', message: 'already in use' }]);

/** A reservation older than this whose user never reached the log is abandoned. */
const STALE_RESERVATION_MS = 30_000;

@Injectable()
export class UsersService {
  readonly handler: CommandHandler<UserState, UserCommand, UserEvent>;

  constructor(
    store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly tenants: TenantLookup,
    private readonly revoker: SessionRevoker,
    private readonly catalog: RoleCatalog,
    // Access changes for gateways that did not hear them (optional: unit tests run without).
    @Optional() private readonly redis?: Redis,
    @Optional() @Inject('KEEL_AUTH_CONFIG') private readonly config?: KeelConfig,
  ) {
    // After an erasure no retried command is answered with the person's earlier state.
    this.handler = new CommandHandler(store, { context: AUTH_CONTEXT, aggregateType: 'user', decider: userDecider, forgets: [A.userErased] });
  }

  view(tenantId: string, id: string, state: UserState, version: number): User {
    if (state.status === 'none') throw new KeelError('not_found', 'No such user.');
    return { id, tenantId, email: state.email, name: state.name, roles: state.roles, status: state.status, version, createdAt: state.createdAt, updatedAt: state.updatedAt };
  }

  /** The user as the log has it, checked to belong to `tenantId` (else 404: no cross-tenant hints). */
  async load(tenantId: string, userId: string) {
    const loaded = await this.handler.load({ tenantId, aggregateId: userId });
    if (loaded.state.status === 'none') throw new KeelError('not_found', 'No such user in this tenant.');
    return loaded;
  }

  /** Roles the user holds by assignment (any scope), besides its own. */
  async assignedRoles(tenantId: string, userId: string): Promise<string[]> {
    const granted: { role: string }[] = await tenantQuery(
      this.ds,
      tenantId,
      `SELECT role FROM "${AUTH_SCHEMA}".role_assignments WHERE tenant_id = $1 AND user_id = $2`,
      [tenantId, userId],
    );
    return [...new Set(granted.map((g) => g.role))];
  }

  /** The user's own roles and those granted at tenant scope (team-scope grants stay out of tokens and keys). */
  async tenantScopeRoles(tenantId: string, userId: string, own: readonly string[], m?: EntityManager): Promise<string[]> {
    const sql = `SELECT role FROM "${AUTH_SCHEMA}".role_assignments WHERE tenant_id = $1 AND user_id = $2 AND team_id IS NULL`;
    const granted: { role: string }[] = m ? await m.query(sql, [tenantId, userId]) : await tenantQuery(this.ds, tenantId, sql, [tenantId, userId]);
    return [...new Set([...own, ...granted.map((g) => g.role)])];
  }

  /**
   * What a user holds now, as a token issued now would carry it: its own roles (from its log, not
   * the read model, which may lag a change) and its tenant-scope grants, resolved with the role
   * catalog read afresh. A disabled, erased or unknown user holds nothing.
   */
  async currentAccess(tenantId: string, userId: string): Promise<CurrentAccess> {
    const loaded = await this.load(tenantId, userId).catch((error: unknown) => {
      if (error instanceof KeelError && error.code === 'not_found') return null;
      throw error;
    });
    const state = loaded?.state;
    if (!state || state.status !== 'active') return { active: false, roles: [], permissions: [] };
    // The grants and the catalog in one transaction, the catalog not from its cache.
    const { roles, catalog } = await inTenant(this.ds, tenantId, async (m) => ({
      roles: await this.tenantScopeRoles(tenantId, userId, state.roles, m),
      catalog: await this.catalog.roles(tenantId, m),
    }));
    return { active: true, roles, permissions: [...new Set(roles.flatMap((r) => catalog.get(r) ?? []))].sort() };
  }

  /** Every role the user holds: its own, and those granted by assignment (any scope). */
  async heldRoles(tenantId: string, userId: string): Promise<string[]> {
    const user = await this.load(tenantId, userId);
    const own = user.state.status === 'none' ? [] : user.state.roles;
    return [...new Set([...own, ...(await this.assignedRoles(tenantId, userId))])];
  }

  /** The acting API key was made by `userId` (a stolen key must not reset its creator's password and sign in afresh). */
  private async isKeyOf(meta: AuthMeta, userId: string): Promise<boolean> {
    if (meta.actor.kind !== 'api_key' || !meta.actor.tenantId) return false;
    const [key]: { created_by: string }[] = await tenantQuery(
      this.ds,
      meta.actor.tenantId,
      `SELECT created_by FROM "${AUTH_SCHEMA}".api_keys WHERE tenant_id = $1 AND id::text = $2 AND created_by_kind = 'user'`,
      [meta.actor.tenantId, meta.actor.id],
    );
    return key?.created_by === userId;
  }

  /** What the user decider needs to decide on someone's access or credentials: the facts, gathered here. */
  async overUser(meta: AuthMeta, tenantId: string, userId: string): Promise<OverUser> {
    await this.load(tenantId, userId); // 404 first: no such user in this tenant
    const self = meta.actor.kind === 'user' && meta.actor.id === userId;
    return {
      held: meta.permissions,
      catalog: await this.catalog.roles(tenantId),
      self,
      viaOwnKey: await this.isKeyOf(meta, userId),
      assigned: self ? [] : await this.assignedRoles(tenantId, userId),
    };
  }

  /**
   * Asks the decider before an expensive step (an Argon2 hash): it is pure, so a refusal here is
   * the refusal the command handler would meet; the handler decides again on the state it appends
   * against.
   */
  private decideNow(command: UserCommand, state: UserState): void {
    userDecider.decide(command, state);
  }

  async run(tenantId: string, userId: string, command: UserCommand, meta: CommandMeta, fresh = false): Promise<CommandResult<User>> {
    const r = await this.handler.handle({ tenantId, aggregateId: userId }, command, meta, fresh);
    return { state: this.view(tenantId, userId, r.state, r.version), version: r.version, position: r.position };
  }

  @MessagePattern(authRpc.createUser.subject)
  async create(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.create, body, 'user');
    const { email, name, roles, password } = payload.data;
    return this.createUser(payload.tenantId, { email, name, roles, password }, meta, meta.permissions);
  }

  /**
   * Also used to create the first platform administrator and the users an identity provider
   * provisions; `held` is what the caller holds ('*' for the system). The rules (the roles are
   * grantable, the password policy, the tenant's maxUsers) are the user decider's: this gathers
   * their facts and keeps the email reservation.
   */
  async createUser(
    tenantId: string,
    u: { email: string; name: string; roles: string[]; password?: string },
    meta: CommandMeta,
    held: Held,
  ): Promise<CommandResult<User>> {
    const tenant = tenantId === 'platform' ? undefined : await this.tenants.active(tenantId);
    const maxUsers = tenant ? tenant.quotas.maxUsers : null;
    const catalog = await this.catalog.roles(tenantId);
    // With a command id the user's id comes from it: a retry of this create finds this user (and
    // holds its email reservation) and is answered the first outcome from the log.
    const userId = meta.commandId ? aggregateIdFor(meta.commandId, 'user', tenantId) : newEventId();
    // A retry of the create of someone since erased: nothing comes back (no reservation, no password).
    if (meta.commandId && (await this.handler.load({ tenantId, aggregateId: userId })).state.status === 'erased') {
      throw new KeelError('conflict', 'The user this request created was erased since; send a new request (a new Idempotency-Key) to create a user.');
    }
    const decided = await inTenant(this.ds, tenantId, async (m) => {
      // Serialises creations per tenant, so the quota's count and the reservation agree.
      await m.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`keel.auth.users.${tenantId}`]);
      // Every other user holding a place in the tenant (this one's own reservation, on a retry, is not counted).
      const [{ n }] = await m.query(`SELECT count(*)::int AS n FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = $1 AND user_id <> $2`, [tenantId, userId]);
      const command: UserCommand = {
        type: 'create',
        data: { email: u.email, name: u.name, roles: u.roles },
        ...(u.password !== undefined ? { password: u.password, ...(tenant ? { tenantSlug: tenant.slug } : {}) } : {}),
        authority: { held, catalog },
        quota: { maxUsers, users: n },
      };
      if (meta.commandId) {
        const [mine] = await m.query(`SELECT user_id FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = $1 AND email = $2`, [tenantId, u.email]);
        if (mine?.user_id === userId) return { command, stale: null }; // a retry of the create that reserved it
      }
      // The decision before the email is reserved (a refusal reserves nothing), under the lock.
      this.decideNow(command, userDecider.initialState());
      const inserted = await m.query(
        `INSERT INTO "${AUTH_SCHEMA}".email_reservations (tenant_id, email, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING user_id`,
        [tenantId, u.email, userId],
      );
      if (inserted.length) return { command, stale: null };
      const stale = await this.staleReservation(m, tenantId, u.email);
      if (!stale) throw emailInUse();
      return { command, stale };
    });
    // Outside the transaction: whether the stale reservation's user ever reached the log is a
    // read of the log (no transaction waits on NATS), then a conditional take-over.
    if (decided.stale && !(await this.takeOverStale(tenantId, u.email, userId, decided.stale))) throw emailInUse();
    // The password was allowed by the decision above: only now is its (expensive) hash made.
    const hash = u.password ? await argon2.hash(u.password, ARGON2_OPTIONS) : null;
    // Set once the command handler has answered: from then on the user is on the log and its email
    // reservation must stay, whatever fails after.
    let appended = false;
    try {
      const r = await this.handler.handle({ tenantId, aggregateId: userId }, decided.command, meta, !meta.commandId);
      appended = true;
      const result = { state: this.view(tenantId, userId, r.state, r.version), version: r.version, position: r.position };
      if (r.events.length === 0) {
        // A retry answered from the log: the email asked for now stays free if the first create took
        // another, and the first create's password stands (set here only if it never was).
        if (result.state.email !== u.email) {
          await tenantQuery(this.ds, tenantId, `DELETE FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = $1 AND email = $2 AND user_id = $3`, [tenantId, u.email, userId]);
        }
        if (hash) {
          await tenantQuery(this.ds, tenantId, `INSERT INTO "${AUTH_SCHEMA}".credentials (user_id, tenant_id, password_hash) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING`, [userId, tenantId, hash]);
        }
      } else if (hash) await this.setHash(tenantId, userId, hash);
      return result;
    } catch (error) {
      if (appended) {
        // The user is on the log (and holds its email); only its password hash or the retry's
        // bookkeeping did not land. A retry with the same Idempotency-Key is answered from the log
        // and fills in the hash (ON CONFLICT DO NOTHING).
        throw new KeelError('service_unavailable', 'The user was created but its password could not be stored yet; retry with the same Idempotency-Key.');
      }
      // A refusal of the append frees the email. An unavailable log may still store the event (a
      // copy in flight): the reservation stays, and is taken over once stale only if the log never
      // got the user.
      if (!(error instanceof KeelError && error.code === 'service_unavailable')) {
        await tenantQuery(this.ds, tenantId, `DELETE FROM "${AUTH_SCHEMA}".email_reservations WHERE user_id = $1`, [userId]);
      }
      throw error;
    }
  }

  /** The reservation of an email when it is older than STALE_RESERVATION_MS (else null). */
  private async staleReservation(m: EntityManager, tenantId: string, email: string): Promise<{ userId: string } | null> {
    const [held] = await m.query(
      `SELECT user_id, reserved_at FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = $1 AND email = $2`,
      [tenantId, email],
    );
    if (!held || Date.now() - new Date(held.reserved_at).getTime() <= STALE_RESERVATION_MS) return null;
    return { userId: held.user_id };
  }

  /**
   * Takes over a stale reservation whose user never reached the log, if it is still that user's
   * (another creator may have taken it over at the same time).
   */
  private async takeOverStale(tenantId: string, email: string, userId: string, held: { userId: string }): Promise<boolean> {
    if ((await this.handler.load({ tenantId, aggregateId: held.userId })).version !== 0) return false;
    const [, taken] = await tenantQuery(
      this.ds,
      tenantId,
      `UPDATE "${AUTH_SCHEMA}".email_reservations SET user_id = $3, reserved_at = now() WHERE tenant_id = $1 AND email = $2 AND user_id = $4`,
      [tenantId, email, userId, held.userId],
    );
    return taken === 1;
  }

  /** Writes the hash of a password change whose event is on the log; false when the write failed. */
  private async hashAfterEvent(tenantId: string, userId: string, hash: string): Promise<boolean> {
    try {
      await this.setHash(tenantId, userId, hash);
      return true;
    } catch {
      return false;
    }
  }

  private async setHash(tenantId: string, userId: string, hash: string): Promise<void> {
    await tenantQuery(
      this.ds,
      tenantId,
      `INSERT INTO "${AUTH_SCHEMA}".credentials (user_id, tenant_id, password_hash) VALUES ($1, $2, $3)
       ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()`,
      [userId, tenantId, hash],
    );
  }

  @MessagePattern(authRpc.setUserStatus.subject)
  async setStatus(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.status, body, 'user status');
    const authority = await this.overUser(meta, payload.tenantId, payload.userId);
    const command: UserCommand = payload.status === 'disabled' ? { type: 'disable', data: {}, authority } : { type: 'enable', data: {}, authority };
    const result = await this.run(payload.tenantId, payload.userId, command, meta);
    if (payload.status === 'disabled') {
      await this.revoker.revokeUser(payload.tenantId, payload.userId, 'user_disabled', meta);
      await this.accessChanged([{ user: payload.userId }]);
    }
    return result;
  }

  /** Records access changes in Redis (after their events are on the log), for gateways that did not hear them. */
  async accessChanged(changes: AccessChange[]): Promise<void> {
    await recordAccessChanges(this.redis, this.config?.KEEL_REDIS_PREFIX ?? '', changes);
  }

  /** Sets a user's roles; when they changed, the user's tokens issued before are refused at every gateway (by the event, and Redis). */
  private async runSetRoles(tenantId: string, userId: string, command: UserCommand, meta: CommandMeta): Promise<CommandResult<User>> {
    const r = await this.handler.handle({ tenantId, aggregateId: userId }, command, meta);
    if (r.events.length) await this.accessChanged([{ user: userId }]);
    return { state: this.view(tenantId, userId, r.state, r.version), version: r.version, position: r.position };
  }

  @MessagePattern(authRpc.setUserRoles.subject)
  async setRoles(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.roles, body, 'roles');
    const authority = await this.overUser(meta, payload.tenantId, payload.userId);
    return this.runSetRoles(payload.tenantId, payload.userId, { type: 'set_roles', data: payload.data, authority }, meta);
  }

  /** Sets a user's roles as an identity provider's claims say (its roles were checked grantable when it was saved). */
  async setRolesBy(byProvider: AuthMeta, tenantId: string, userId: string, roles: string[]): Promise<CommandResult<User>> {
    const authority = await this.overUser(byProvider, tenantId, userId);
    return this.runSetRoles(tenantId, userId, { type: 'set_roles', data: { roles }, authority }, byProvider);
  }

  @MessagePattern(authRpc.updateProfile.subject)
  async updateProfile(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.profile, body, 'profile');
    await this.load(payload.tenantId, payload.userId);
    return this.run(payload.tenantId, payload.userId, { type: 'update_profile', data: payload.data }, meta);
  }

  /** The tenant's slug, which the password policy keeps out of passwords (the platform has none). */
  private async slugOf(tenantId: string): Promise<{ tenantSlug?: string }> {
    if (tenantId === 'platform') return {};
    const tenant = await this.tenants.find(tenantId);
    return tenant ? { tenantSlug: tenant.slug } : {};
  }

  @MessagePattern(authRpc.resetPassword.subject)
  async resetPassword(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.reset, body, 'password reset');
    const command: UserCommand = { type: 'reset_password', password: payload.data.password, ...(await this.slugOf(payload.tenantId)), authority: await this.overUser(meta, payload.tenantId, payload.userId) };
    const user = await this.load(payload.tenantId, payload.userId);
    this.decideNow(command, user.state);
    const hash = await argon2.hash(payload.data.password, ARGON2_OPTIONS);
    // The event first: a refused or unavailable append changes nothing (no write around the log).
    const result = await this.run(payload.tenantId, payload.userId, command, meta);
    const stored = await this.hashAfterEvent(payload.tenantId, payload.userId, hash);
    // A reset is what an administrator does for a compromised account: its sessions end even when
    // the new hash did not land.
    await this.revoker.revokeUser(payload.tenantId, payload.userId, 'password_reset', meta);
    if (!stored) throw passwordNotStored();
    return result;
  }

  @MessagePattern(authRpc.changePassword.subject)
  async changePassword(body: unknown): Promise<CommandResult<User>> {
    const { meta, payload } = parseOrThrow(requests.change, body, 'password change');
    const user = await this.load(payload.tenantId, payload.userId);
    const [cred] = await tenantQuery(this.ds, payload.tenantId, `SELECT password_hash FROM "${AUTH_SCHEMA}".credentials WHERE user_id = $1`, [payload.userId]);
    const currentPasswordRight = !!cred && (await argon2.verify(cred.password_hash, payload.data.currentPassword));
    const command: UserCommand = { type: 'change_password', password: payload.data.newPassword, ...(await this.slugOf(payload.tenantId)), currentPasswordRight };
    this.decideNow(command, user.state);
    const hash = await argon2.hash(payload.data.newPassword, ARGON2_OPTIONS);
    const result = await this.run(payload.tenantId, payload.userId, command, meta);
    if (!(await this.hashAfterEvent(payload.tenantId, payload.userId, hash))) throw passwordNotStored();
    return result;
  }

  @MessagePattern(authRpc.user.subject)
  async get(body: unknown): Promise<User> {
    const q = parseOrThrow(requests.get, body, 'user lookup');
    const loaded = await this.load(q.tenantId, q.userId);
    return this.view(q.tenantId, q.userId, loaded.state, loaded.version);
  }

  @MessagePattern(authRpc.users.subject)
  async list(body: unknown): Promise<Page<User>> {
    const q = parseOrThrow(requests.list, body, 'user listing');
    const rows = await tenantQuery(
      this.ds,
      q.tenantId,
      `SELECT * FROM "${AUTH_SCHEMA}".users WHERE tenant_id = $1 ${q.cursor ? 'AND id > $3' : ''} ORDER BY id LIMIT $2`,
      q.cursor ? [q.tenantId, q.limit + 1, q.cursor] : [q.tenantId, q.limit + 1],
    );
    const items: User[] = rows.slice(0, q.limit).map((r: Record<string, unknown>) => ({
      id: r.id, tenantId: r.tenant_id, email: r.email, name: r.name, roles: r.roles, status: r.status, version: r.version,
      createdAt: (r.created_at as Date).toISOString(), updatedAt: (r.updated_at as Date).toISOString(),
    }));
    return { items, nextCursor: rows.length > q.limit ? items[items.length - 1]!.id : null };
  }
}
