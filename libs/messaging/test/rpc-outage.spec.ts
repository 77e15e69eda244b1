import { createServer } from 'node:net';
import { AddressInfo } from 'node:net';
import { Client } from 'pg';
import { Subscription } from 'nats';
import { parseConfig } from '@keel/config';
import { createLogger } from '@keel/observability';
import { cleanupEnv, isolatedEnv } from '@keel/testing';
import { closeMessaging, connectMessaging, Messaging, RpcClient, serveRpc } from '@keel/messaging';

const logger = createLogger('rpc-outage-test', 'silent');

async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** What a handler's failure is answered as, over the real NATS. */
describe('serveRpc answers an outage as service_unavailable', () => {
  const env = isolatedEnv('rpcoutage');
  const config = parseConfig({ ...env, KEEL_REQUEST_TIMEOUT_MS: '3000' });
  let server: Messaging;
  let caller: Messaging;
  let client: RpcClient;
  const subs: Subscription[] = [];

  beforeAll(async () => {
    server = await connectMessaging(config, 'rpc-outage-server');
    caller = await connectMessaging(config, 'rpc-outage-caller');
    client = new RpcClient(caller);
    const port = await closedPort();
    subs.push(
      serveRpc(server, 'qry.outage.postgres', 'outage', async () => {
        // A real pg error: Postgres is not there.
        const c = new Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/x` });
        await c.connect();
        return 'unreachable';
      }, logger),
      serveRpc(server, 'qry.outage.bug', 'outage', async () => {
        const o = undefined as unknown as { id: string };
        return o.id;
      }, logger),
    );
    await server.nc.flush();
  });

  afterAll(async () => {
    for (const s of subs) s.unsubscribe();
    await Promise.all([closeMessaging(server), closeMessaging(caller)]);
    await cleanupEnv(env);
  });

  it('a Postgres that refuses connections is service_unavailable (503), not internal', async () => {
    await expect(client.request('qry.outage.postgres', {})).rejects.toMatchObject({ code: 'service_unavailable' });
  });

  it('a bug stays internal', async () => {
    await expect(client.request('qry.outage.bug', {})).rejects.toMatchObject({ code: 'internal' });
  });
});
