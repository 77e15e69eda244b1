import { newEventId, Tenant } from '@keel/contracts';
import { encodeJson, Messaging, RpcClient } from '@keel/messaging';
import { TenantDirectory } from './tenant-directory';

const ID = '01a20186-4df0-76d5-bf99-e87be230bc1a';

function tenant(version: number, status: Tenant['status'] = 'active', id = ID, slug = 'acme'): Tenant {
  return { id, slug, name: 'Acme', plan: 'starter', status, version } as Tenant;
}

/** A tenant id (UUIDv7 shape) numbered n. */
const idOf = (n: number) => `01a20186-4df0-76d5-bf99-${n.toString(16).padStart(12, '0')}`;

/** A valid envelope of a tenant event at `version`, as the event store publishes it. */
function envelope(version: number, id = ID) {
  return {
    id: newEventId(), type: 'tenant.tenant.settings_updated', schemaVersion: 1, tenantId: id, aggregateType: 'tenant', aggregateId: id,
    aggregateVersion: version, occurredAt: new Date().toISOString(), actor: { kind: 'system', id: 'test' }, correlationId: 'c-1', data: {},
  };
}

/** The directory over a stubbed NATS connection (events are delivered by hand) and RPC client. */
function directory(answers: Record<string, Tenant>) {
  let deliver: (data: unknown) => void = () => undefined;
  const m = {
    prefix: 'p.',
    nc: {
      subscribe: (_subject: string, opts: { callback: (err: unknown, msg: { data: Uint8Array }) => void }) => {
        deliver = (data) => opts.callback(null, { data: encodeJson(data) });
        return { unsubscribe: () => undefined };
      },
      status: () => ({ [Symbol.asyncIterator]: () => ({ next: () => new Promise(() => undefined) }) }),
    },
  } as unknown as Messaging;
  const asked: string[] = [];
  const rpc = {
    request: async (subject: string) => {
      asked.push(subject);
      return answers[subject];
    },
  } as unknown as RpcClient;
  const dir = new TenantDirectory(m, rpc);
  dir.onModuleInit();
  const hear = (version: number, id = ID) => deliver(envelope(version, id));
  return { dir, asked, hear, deliver };
}

describe('TenantDirectory', () => {
  it('serves a remembered tenant from memory, by id and by slug', async () => {
    const { dir, asked } = directory({});
    dir.remember(tenant(1));
    expect((await dir.get(ID)).version).toBe(1);
    expect((await dir.get('acme')).version).toBe(1);
    expect(asked).toEqual([]);
  });

  it('answers cached() at once exactly where get() would answer from memory, and its JSON once per version', async () => {
    const { dir, hear } = directory({});
    expect(dir.cached(ID)).toBeUndefined();
    const t1 = tenant(1);
    dir.remember(t1);
    expect(dir.cached(ID)).toBe(t1);
    expect(dir.cached('acme')).toBe(t1);
    expect(dir.cached('other-slug')).toBeUndefined();
    const stringify = jest.spyOn(JSON, 'stringify');
    try {
      expect(dir.json(t1)).toBe(JSON.stringify(t1));
      expect(dir.json(t1)).toBe(dir.json(t1));
      // One serialisation for the directory (the first call) and one for the expectation itself.
      expect(stringify.mock.calls.filter(([v]) => v === t1)).toHaveLength(2);
    } finally {
      stringify.mockRestore();
    }
    // What get() answers from memory is what cached() answers.
    expect(await dir.get(ID)).toBe(dir.cached(ID));
    // A newer version heard: not served from memory any more (get asks the tenant's log).
    hear(2);
    expect(dir.cached(ID)).toBeUndefined();
    expect(dir.cached('acme')).toBeUndefined();
    const t2 = tenant(2, 'suspended');
    dir.remember(t2);
    expect(dir.cached(ID)).toBe(t2);
    expect(dir.json(t2)).toContain('"suspended"');
  });

  it('after hearing a newer event, answers from the tenant log, not the lagging read model', async () => {
    const { dir, asked, hear } = directory({ 'qry.tenant.current': tenant(2, 'suspended'), 'qry.tenant.get': tenant(1) });
    dir.remember(tenant(1));
    hear(2);
    expect(await dir.get(ID)).toMatchObject({ version: 2, status: 'suspended' });
    expect(asked).toEqual(['qry.tenant.current']);
    // Kept: the next read costs nothing.
    expect((await dir.get('acme')).status).toBe('suspended');
    expect(asked).toEqual(['qry.tenant.current']);
  });

  it('never keeps nor serves a version older than one it heard of', async () => {
    const { dir, hear, asked } = directory({ 'qry.tenant.get': tenant(1), 'qry.tenant.current': tenant(3) });
    hear(3);
    dir.remember(tenant(2));
    // Not kept: the slug is unknown here, so the read model is asked; it lags, so the log is.
    expect((await dir.get('acme')).version).toBe(3);
    expect(asked).toEqual(['qry.tenant.get', 'qry.tenant.current']);
  });

  it('hears each event of a decision published as one message (a JSON array of envelopes), fencing at the newest', async () => {
    const { dir, asked, deliver } = directory({ 'qry.tenant.current': tenant(3, 'suspended'), 'qry.tenant.get': tenant(1) });
    dir.remember(tenant(1));
    deliver([envelope(2), envelope(3)]);
    expect(dir.size.entries).toBe(1); // a decodable message does not empty the directory
    expect(await dir.get(ID)).toMatchObject({ version: 3, status: 'suspended' });
    expect(asked).toEqual(['qry.tenant.current']);
  });

  it('empties itself on a message that is no envelope', async () => {
    const { dir, deliver } = directory({});
    dir.remember(tenant(1));
    deliver({ aggregateId: ID });
    expect(dir.size.entries).toBe(0);
  });

  it('goes to the read model with consistentWith, whatever it holds', async () => {
    const { dir, asked } = directory({ 'qry.tenant.get': tenant(4) });
    dir.remember(tenant(4));
    expect((await dir.get(ID, 17)).version).toBe(4);
    expect(asked).toEqual(['qry.tenant.get']);
  });

  describe('bounded', () => {
    it('keeps at most maxEntries tenants and their slugs, evicting the least recently stored', async () => {
      const { dir, asked } = directory({});
      dir.limits.maxEntries = 3;
      for (let n = 1; n <= 10; n++) dir.remember(tenant(1, 'active', idOf(n), `t-${n}`));
      expect(dir.size).toMatchObject({ entries: 3, slugs: 3 });
      expect((await dir.get('t-10')).id).toBe(idOf(10));
      expect(asked).toEqual([]);
    });

    it('keeps at most maxFences fences', () => {
      const { dir, hear } = directory({});
      dir.limits.maxFences = 5;
      for (let n = 1; n <= 50; n++) hear(2, idOf(n));
      expect(dir.size.fences).toBe(5);
    });

    it('drops a slug that was renamed away, so the size stays bounded', async () => {
      const { dir } = directory({});
      dir.remember(tenant(1, 'active', ID, 'old-name'));
      dir.remember(tenant(2, 'active', ID, 'new-name'));
      expect(dir.size.slugs).toBe(1);
      expect((await dir.get('new-name')).version).toBe(2);
    });

    it('never serves a version older than a heard one, even after the fence that knew of it was evicted', async () => {
      // The read model lags: it still has version 1; the log has the suspension (version 2).
      const { dir, asked, hear } = directory({ 'qry.tenant.get': tenant(1), 'qry.tenant.current': tenant(2, 'suspended') });
      dir.limits.maxFences = 3;
      dir.remember(tenant(1));
      hear(2);
      // Other tenants' events push this tenant's fence (and its entry) out.
      for (let n = 1; n <= 10; n++) hear(1, idOf(n));
      expect(dir.size.fences).toBe(3);
      expect(await dir.get(ID)).toMatchObject({ version: 2, status: 'suspended' });
      expect(asked).toEqual(['qry.tenant.current']);
    });

    it('by slug too: a tenant without a fence is re-read from its log while evicted fences may matter', async () => {
      const { dir, asked, hear } = directory({ 'qry.tenant.get': tenant(1), 'qry.tenant.current': tenant(2, 'suspended') });
      dir.limits.maxFences = 2;
      hear(2);
      for (let n = 1; n <= 5; n++) hear(1, idOf(n));
      expect(await dir.get('acme')).toMatchObject({ version: 2, status: 'suspended' });
      expect(asked).toEqual(['qry.tenant.get', 'qry.tenant.current']);
    });

    it('reads the read model again once no fence has been evicted for forgottenFenceMs', async () => {
      const { dir, asked, hear } = directory({ 'qry.tenant.get': tenant(1) });
      dir.limits.maxFences = 2;
      dir.limits.forgottenFenceMs = 0;
      for (let n = 1; n <= 5; n++) hear(1, idOf(n));
      expect((await dir.get(ID)).version).toBe(1);
      expect(asked).toEqual(['qry.tenant.get']);
    });
  });
});
