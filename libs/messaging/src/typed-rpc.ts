import { RpcDecl, RpcRequest, RpcResponse } from '@keel/contracts';
import { RpcClient } from './rpc';

/**
 * A command or query, typed by its declaration in `libs/contracts`: the subject, what to send and
 * what comes back all come from there, so a caller cannot name a subject nobody serves or send a
 * payload its handler would refuse (the handler parses with the same request schema).
 * `timeoutMs` defaults to the declaration's own wait, else the client's request timeout.
 */
export function callRpc<D extends RpcDecl>(rpc: RpcClient, decl: D, body: RpcRequest<D>, timeoutMs?: number): Promise<RpcResponse<D>> {
  return rpc.request<RpcResponse<D>>(decl.subject, body, timeoutMs ?? decl.timeoutMs);
}

/** `rpc.call(commands.tenant.create, payload)`: the typed call beside `RpcClient.request`. */
export class TypedRpc {
  constructor(readonly client: RpcClient) {}

  call<D extends RpcDecl>(decl: D, body: RpcRequest<D>, timeoutMs?: number): Promise<RpcResponse<D>> {
    return callRpc(this.client, decl, body, timeoutMs);
  }
}
