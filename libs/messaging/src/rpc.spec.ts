import { ErrorCode, NatsError } from 'nats';
import { KeelError } from '@keel/contracts';
import { decodeJson, encodeJson } from './codec';
import { Messaging } from './connection';
import { RpcClient } from './rpc';

/** A Messaging whose only used part, `nc.request`, is a jest mock. */
function stubMessaging(request: jest.Mock): Messaging {
  return { nc: { request }, prefix: 'run1.', requestTimeoutMs: 1234, stream: 'S' } as unknown as Messaging;
}

async function caught(p: Promise<unknown>): Promise<KeelError> {
  try {
    await p;
  } catch (error) {
    return error as KeelError;
  }
  throw new Error('expected a rejection');
}

describe('RpcClient.request', () => {
  it('sends the body as JSON to the prefixed subject with the default timeout and answers the value', async () => {
    const request = jest.fn().mockResolvedValue({ data: encodeJson({ ok: true, value: { id: 't1', n: 2 } }) });
    const client = new RpcClient(stubMessaging(request));
    await expect(client.request('qry.tenant.get', { idOrSlug: 'acme' })).resolves.toEqual({ id: 't1', n: 2 });
    expect(request).toHaveBeenCalledTimes(1);
    const [subject, data, opts] = request.mock.calls[0];
    expect(subject).toBe('run1.qry.tenant.get');
    expect(decodeJson(data)).toEqual({ idOrSlug: 'acme' });
    expect(opts.timeout).toBe(1234);
    expect(opts.headers).toBeDefined();
  });

  it('uses an explicit timeout when given one', async () => {
    const request = jest.fn().mockResolvedValue({ data: encodeJson({ ok: true, value: null }) });
    await new RpcClient(stubMessaging(request)).request('cmd.x.y', {}, 60_000);
    expect(request.mock.calls[0][2].timeout).toBe(60_000);
  });

  it('turns "no responders" into service_unavailable naming the subject', async () => {
    const request = jest.fn().mockRejectedValue(new NatsError('503', ErrorCode.NoResponders));
    const error = await caught(new RpcClient(stubMessaging(request)).request('cmd.tenant.create', {}));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('service_unavailable');
    expect(error.status).toBe(503);
    expect(error.message).toBe('No service is answering cmd.tenant.create; try again shortly.');
  });

  it('turns a timeout into service_unavailable naming the subject and the time waited', async () => {
    const request = jest.fn().mockRejectedValue(new NatsError('timeout', ErrorCode.Timeout));
    const error = await caught(new RpcClient(stubMessaging(request)).request('qry.audit.verify', {}, 250));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('service_unavailable');
    expect(error.message).toBe('qry.audit.verify did not answer within 250 ms; try again.');
  });

  it('turns any other messaging failure into service_unavailable carrying its message', async () => {
    const request = jest.fn().mockRejectedValue(new NatsError('connection closed', ErrorCode.ConnectionClosed));
    const error = await caught(new RpcClient(stubMessaging(request)).request('qry.x.y', {}));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('service_unavailable');
    expect(error.message).toContain('qry.x.y');
    expect(error.message).toContain('connection closed');
  });

  it('rethrows an error answer as a KeelError with the same code, message and fields', async () => {
    const fields = [{ field: 'idOrSlug', message: 'unknown' }];
    const request = jest.fn().mockResolvedValue({
      data: encodeJson({ ok: false, error: { code: 'not_found', message: 'No tenant acme.', fields } }),
    });
    const error = await caught(new RpcClient(stubMessaging(request)).request('qry.tenant.get', { idOrSlug: 'acme' }));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('not_found');
    expect(error.status).toBe(404);
    expect(error.message).toBe('No tenant acme.');
    expect(error.fields).toEqual(fields);
  });

  it('answers an error code it does not know as internal', async () => {
    const request = jest.fn().mockResolvedValue({ data: encodeJson({ ok: false, error: { code: 'toString', message: 'odd' } }) });
    const error = await caught(new RpcClient(stubMessaging(request)).request('qry.x.y', {}));
    expect(error).toBeInstanceOf(KeelError);
    expect(error.code).toBe('internal');
    expect(error.message).toBe('odd');
  });
});
