import { commands, queries } from '@keel/contracts';
import { RpcClient } from './rpc';
import { TypedRpc } from './typed-rpc';

/** A client that records what it was asked to send. */
function recording() {
  const sent: { subject: string; body: unknown; timeoutMs?: number }[] = [];
  const client = {
    request: async (subject: string, body: unknown, timeoutMs?: number) => {
      sent.push({ subject, body, timeoutMs });
      return { echoed: subject };
    },
  } as unknown as RpcClient;
  return { sent, rpc: new TypedRpc(client) };
}

describe('TypedRpc.call', () => {
  it('sends to the declared subject with the body as given, and the declared timeout unless one is passed', async () => {
    const { sent, rpc } = recording();
    const meta = { actor: { kind: 'system' as const, id: 'test' }, correlationId: 'c1' };
    await expect(rpc.call(commands.tenant.create, { meta, payload: { slug: 'acme-co', name: 'Acme', plan: 'starter' } })).resolves.toEqual({ echoed: 'cmd.tenant.create' });
    await rpc.call(queries.audit.verify, {});
    await rpc.call(queries.audit.verify, {}, 500);
    expect(sent).toEqual([
      { subject: 'cmd.tenant.create', body: { meta, payload: { slug: 'acme-co', name: 'Acme', plan: 'starter' } }, timeoutMs: undefined },
      { subject: 'qry.audit.verify', body: {}, timeoutMs: 120_000 },
      { subject: 'qry.audit.verify', body: {}, timeoutMs: 500 },
    ]);
  });

});
