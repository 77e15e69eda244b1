import { Tenant } from '@keel/contracts';
import { encodeJson, Messaging, RpcClient } from '@keel/messaging';
import { TenantDirectory } from './tenant-directory';

const ID = '01a20186-4df0-76d5-bf99-e87be230bc1a';

function tenant(version: number, status: Tenant['status'] = 'active'): Tenant {
  return { id: ID, slug: 'acme', name: 'Acme', plan: 'starter', status, version } as Tenant;
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
  const hear = (version: number) => deliver({ aggregateId: ID, aggregateVersion: version });
  return { dir, asked, hear };
}

describe('TenantDirectory', () => {
  it('serves a remembered tenant from memory, by id and by slug', async () => {
    const { dir, asked } = directory({});
    dir.remember(tenant(1));
    expect((await dir.get(ID)).version).toBe(1);
    expect((await dir.get('acme')).version).toBe(1);
    expect(asked).toEqual([]);
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

  it('goes to the read model with consistentWith, whatever it holds', async () => {
    const { dir, asked } = directory({ 'qry.tenant.get': tenant(4) });
    dir.remember(tenant(4));
    expect((await dir.get(ID, 17)).version).toBe(4);
    expect(asked).toEqual(['qry.tenant.get']);
  });
});
