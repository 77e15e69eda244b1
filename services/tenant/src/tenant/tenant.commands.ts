import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import {
  CommandMeta,
  CommandResult,
  KeelError,
  newEventId,
  parseOrThrow,
  Tenant,
  TENANT_AGGREGATE,
  TENANT_CONTEXT,
  tenantIdSchema,
  tenantRpc,
} from '@keel/contracts';
import { aggregateIdFor, CommandHandler } from '@keel/event-sourcing';
import { EventStore, MessagePattern } from '@keel/messaging';
import { CROSS_TENANT_DS, TENANT_SCHEMA } from '../database/schema';
import { SlugReservations } from './slug-reservations';
import { TenantDecisionCommand, tenantDecider, TenantState, toTenant } from './tenant.decider';

// Each command and query parses its input with the request schema its declaration in libs/contracts names.
const requests = {
  create: tenantRpc.create.request,
  changePlan: tenantRpc.changePlan.request,
  updateSettings: tenantRpc.updateSettings.request,
  suspend: tenantRpc.suspend.request,
  reactivate: tenantRpc.reactivate.request,
  close: tenantRpc.close.request,
  current: tenantRpc.current.request,
};

/** Slugs reserved before their tenant's creating event is appended (unique across tenants). */
const SLUG_TABLE = `"${TENANT_SCHEMA}".slug_reservations`;

/** A reservation older than this whose tenant never reached the log is abandoned. */
const STALE_RESERVATION_MS = 30_000;

@Injectable()
export class TenantCommands {
  private readonly handler: CommandHandler<TenantState, TenantDecisionCommand, never>;
  private readonly reservations: SlugReservations;

  constructor(
    private readonly store: EventStore,
    @Inject(CROSS_TENANT_DS) private readonly crossTenant: DataSource,
  ) {
    this.handler = new CommandHandler(store, {
      context: TENANT_CONTEXT,
      aggregateType: TENANT_AGGREGATE,
      decider: tenantDecider as never,
    });
    this.reservations = new SlugReservations(crossTenant, SLUG_TABLE);
  }

  /**
   * The tenant as its log has it now, by id or slug: for commands in other services that must
   * see a tenant created or changed a moment ago (the read model may not have it yet).
   */
  @MessagePattern('qry.tenant.current')
  async current(body: unknown): Promise<Tenant> {
    const { idOrSlug } = parseOrThrow(requests.current, body, 'tenant lookup');
    let tenantId: string | undefined = idOrSlug;
    if (!tenantIdSchema.safeParse(idOrSlug).success) {
      const [held] = await this.crossTenant.query(`SELECT tenant_id FROM ${SLUG_TABLE} WHERE slug = $1`, [idOrSlug]);
      tenantId = held?.tenant_id;
    }
    if (!tenantId) throw new KeelError('not_found', 'No such tenant.');
    const loaded = await this.handler.load({ tenantId, aggregateId: tenantId });
    return toTenant(tenantId, loaded.state, loaded.version);
  }

  @MessagePattern('cmd.tenant.create')
  async create(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.create, body, 'tenant');
    // With a command id the tenant's id comes from it: a retry of this create finds this tenant
    // (and holds its slug reservation) and is answered the first outcome from the log.
    const tenantId = meta.commandId ? aggregateIdFor(meta.commandId, TENANT_AGGREGATE) : newEventId();
    await this.reserveSlug(payload.slug, tenantId);
    try {
      const result = await this.run(tenantId, { type: 'create', data: payload }, meta, !meta.commandId);
      if (result.state.slug !== payload.slug) {
        // The command id was used before with another slug: that first tenant is the answer, and
        // the slug asked for now stays free.
        await this.releaseSlug(payload.slug, tenantId);
      }
      return result;
    } catch (error) {
      // An unavailable log may still store the event (a copy in flight): the reservation stays,
      // and is taken over once stale only if the log never got the tenant (see reserveSlug).
      if (error instanceof KeelError && error.code === 'service_unavailable') throw error;
      if (error instanceof KeelError && error.code === 'conflict') {
        // "Already exists": a retry of an old create whose answer was forgotten (Redis no longer
        // has it, the aggregate keeps only its last commands' ids). The tenant of this id is live
        // and holds its slug: it is the answer, as for a replay, and nothing of it is released.
        const existing = await this.handler.load({ tenantId, aggregateId: tenantId });
        if (existing.version > 0) {
          const tenant = toTenant(tenantId, existing.state, existing.version);
          if (tenant.slug !== payload.slug) await this.releaseSlug(payload.slug, tenantId);
          return { state: tenant, version: existing.version, position: existing.position };
        }
      }
      // Refused while the tenant does not exist: the slug is free again.
      await this.releaseSlug(payload.slug, tenantId);
      throw error;
    }
  }

  /** Frees a slug reserved for `tenantId` (only that tenant's reservation of it). */
  private async releaseSlug(slug: string, tenantId: string): Promise<void> {
    await this.crossTenant.query(`DELETE FROM ${SLUG_TABLE} WHERE slug = $1 AND tenant_id = $2`, [slug, tenantId]);
  }

  @MessagePattern('cmd.tenant.change_plan')
  async changePlan(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.changePlan, body, 'plan change');
    return this.run(payload.tenantId, { type: 'change_plan', data: payload.data }, meta);
  }

  @MessagePattern('cmd.tenant.update_settings')
  async updateSettings(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.updateSettings, body, 'settings');
    return this.run(payload.tenantId, { type: 'update_settings', data: payload.data }, meta);
  }

  @MessagePattern('cmd.tenant.suspend')
  async suspend(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.suspend, body, 'suspension');
    return this.run(payload.tenantId, { type: 'suspend', data: payload.data }, meta);
  }

  @MessagePattern('cmd.tenant.reactivate')
  async reactivate(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.reactivate, body, 'reactivation');
    return this.run(payload.tenantId, { type: 'reactivate', data: {} }, meta);
  }

  @MessagePattern('cmd.tenant.close')
  async close(body: unknown): Promise<CommandResult<Tenant>> {
    const { meta, payload } = parseOrThrow(requests.close, body, 'closure');
    return this.run(payload.tenantId, { type: 'close', data: payload.data }, meta);
  }

  private async run(tenantId: string, command: TenantDecisionCommand, meta: CommandMeta, fresh = false): Promise<CommandResult<Tenant>> {
    const result = await this.handler.handle({ tenantId, aggregateId: tenantId }, command, meta, fresh);
    return { state: toTenant(tenantId, result.state, result.version), version: result.version, position: result.position };
  }

  /**
   * Reserves a slug atomically (unique key); takes over a reservation whose tenant never came
   * to be. Slugs are unique across tenants: this platform operation sees every tenant's
   * reservations. Each statement stands alone (the take-over is conditional on the holder).
   */
  private async reserveSlug(slug: string, tenantId: string): Promise<void> {
    const m = this.crossTenant;
    // Concurrent creates reserve together (one INSERT and one commit for all of them).
    if (await this.reservations.reserve(slug, tenantId)) return;
    const [held] = await m.query(`SELECT tenant_id, reserved_at FROM ${SLUG_TABLE} WHERE slug = $1`, [slug]);
    // Held for this very tenant: a retry of the create that reserved it (its id comes from the command id).
    if (held?.tenant_id === tenantId) return;
    if (held && Date.now() - new Date(held.reserved_at).getTime() > STALE_RESERVATION_MS) {
      const owner = await this.handler.load({ tenantId: held.tenant_id, aggregateId: held.tenant_id });
      if (owner.version === 0) {
        const [, taken] = await m.query(
          `UPDATE ${SLUG_TABLE} SET tenant_id = $2, reserved_at = now() WHERE slug = $1 AND tenant_id = $3`,
          [slug, tenantId, held.tenant_id],
        );
        if (taken === 1) return;
      }
    }
    throw new KeelError('slug_taken', `The slug "${slug}" is already taken; choose another.`, [
      { field: 'slug', message: 'already taken' },
    ]);
  }
}
