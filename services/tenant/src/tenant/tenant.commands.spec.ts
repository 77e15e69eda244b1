import 'reflect-metadata';
import { DEFAULT_TENANT_SETTINGS, KeelError, PLAN_QUOTAS } from '@keel/contracts';
import { aggregateIdFor } from '@keel/event-sourcing';
import { TenantCommands } from './tenant.commands';
import { tenantDecider, TenantState } from './tenant.decider';

/**
 * TenantCommands.create against a fake slug_reservations table (a Map slug → tenant id) and a
 * fake command handler that decides with the real decider against one stored aggregate.
 */
function fixture(stored: { state: TenantState; version: number; position: number }, opts: { handleError?: KeelError } = {}) {
  const reservations = new Map<string, { tenantId: string; reservedAt: Date }>();
  const ds = {
    async query(sql: string, params: unknown[]) {
      const s = sql.replace(/\s+/g, ' ').trim();
      if (s.startsWith('INSERT INTO')) {
        // A batch of reservations (SlugReservations): the rows inserted, first come first served.
        const [slugs, tenantIds] = params as [string[], string[]];
        const inserted: { slug: string; tenant_id: string }[] = [];
        slugs.forEach((slug, i) => {
          if (reservations.has(slug)) return;
          reservations.set(slug, { tenantId: tenantIds[i]!, reservedAt: new Date() });
          inserted.push({ slug, tenant_id: tenantIds[i]! });
        });
        return inserted;
      }
      const [slug, tenantId] = params as [string, string];
      if (s.startsWith('SELECT tenant_id, reserved_at')) {
        const held = reservations.get(slug);
        return held ? [{ tenant_id: held.tenantId, reserved_at: held.reservedAt }] : [];
      }
      if (s.startsWith('DELETE FROM')) {
        if (reservations.get(slug)?.tenantId === tenantId) reservations.delete(slug);
        return [[], 1];
      }
      throw new Error(`unexpected SQL: ${s}`);
    },
  };
  const commands = new TenantCommands({} as never, ds as never);
  (commands as unknown as { handler: object }).handler = {
    load: async () => stored,
    handle: async (_t: unknown, command: Parameters<typeof tenantDecider.decide>[0]) => {
      if (opts.handleError) throw opts.handleError;
      // The command id is no longer among the aggregate's remembered ones: the decider decides.
      const events = tenantDecider.decide(command, stored.state);
      let state = stored.state;
      for (const e of events) state = tenantDecider.evolve(state, { ...e, occurredAt: '2024-01-02T00:00:00.000Z' });
      return { state, version: stored.version + events.length, position: stored.position + events.length, events };
    },
  };
  return { commands, reservations };
}

const meta = (commandId?: string) => ({ actor: { kind: 'user' as const, id: 'op' }, correlationId: 'c-1', ...(commandId ? { commandId } : {}) });
const live = (slug: string): TenantState => ({
  status: 'active', slug, name: 'Acme', plan: 'starter', quotas: { ...PLAN_QUOTAS.starter }, settings: { ...DEFAULT_TENANT_SETTINGS },
  suspendedReason: null, createdAt: '2024-01-01T00:00:00.000Z', updatedAt: '2024-01-01T00:00:00.000Z',
});

describe('TenantCommands.create', () => {
  it('a forgotten retry of an old create is answered with the live tenant and keeps its slug reserved', async () => {
    const commandId = 'idem-old-create';
    const tenantId = aggregateIdFor(commandId, 'tenant');
    const { commands, reservations } = fixture({ state: live('acme'), version: 3, position: 99 });
    reservations.set('acme', { tenantId, reservedAt: new Date(Date.now() - 3_600_000) });

    const answer = await commands.create({ meta: meta(commandId), payload: { slug: 'acme', name: 'Acme', plan: 'starter' } });
    expect(answer).toMatchObject({ state: { id: tenantId, slug: 'acme', status: 'active' }, version: 3, position: 99 });
    expect(reservations.get('acme')?.tenantId).toBe(tenantId);
  });

  it('a forgotten retry with another slug is answered with the live tenant and frees only the slug asked for now', async () => {
    const commandId = 'idem-old-create-2';
    const tenantId = aggregateIdFor(commandId, 'tenant');
    const { commands, reservations } = fixture({ state: live('acme'), version: 1, position: 5 });
    reservations.set('acme', { tenantId, reservedAt: new Date(Date.now() - 3_600_000) });

    const answer = await commands.create({ meta: meta(commandId), payload: { slug: 'other', name: 'Other', plan: 'starter' } });
    expect(answer.state).toMatchObject({ id: tenantId, slug: 'acme' });
    expect(reservations.get('acme')?.tenantId).toBe(tenantId);
    expect(reservations.has('other')).toBe(false);
  });

  it('a create refused while the tenant does not exist frees its slug', async () => {
    const { commands, reservations } = fixture({ state: { status: 'none' }, version: 0, position: 0 }, { handleError: new KeelError('validation_failed', 'no') });
    await expect(commands.create({ meta: meta('idem-new'), payload: { slug: 'fresh', name: 'Fresh', plan: 'starter' } })).rejects.toMatchObject({ code: 'validation_failed' });
    expect(reservations.has('fresh')).toBe(false);
  });

  it('a conflict while the aggregate is still empty frees the slug and is passed on', async () => {
    const { commands, reservations } = fixture({ state: { status: 'none' }, version: 0, position: 0 }, { handleError: new KeelError('conflict', 'version moved') });
    await expect(commands.create({ meta: meta('idem-new-2'), payload: { slug: 'fresh', name: 'Fresh', plan: 'starter' } })).rejects.toMatchObject({ code: 'conflict' });
    expect(reservations.has('fresh')).toBe(false);
  });

  it('an unavailable log keeps the reservation', async () => {
    const { commands, reservations } = fixture({ state: { status: 'none' }, version: 0, position: 0 }, { handleError: new KeelError('service_unavailable', 'no answer') });
    await expect(commands.create({ meta: meta('idem-new-3'), payload: { slug: 'fresh', name: 'Fresh', plan: 'starter' } })).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(reservations.has('fresh')).toBe(true);
  });
});
