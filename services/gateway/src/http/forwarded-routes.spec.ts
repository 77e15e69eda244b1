import 'reflect-metadata';
import { CanActivate, ExecutionContext, Injectable, Module } from '@nestjs/common';
import { APP_FILTER, APP_GUARD, NestFactory, Reflector } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { z } from 'zod';
import { command, commandRequest, KeelError, query, route, routeGroup, RpcDecl } from '@keel/contracts';
import { KEEL_LOGGER, TypedRpc } from '@keel/messaging';
import { ENDPOINT, EndpointSpec } from './endpoint';
import { forwardedRequest, forwardedRouteControllers } from './forwarded-routes';
import { ProblemFilter } from './problem';
import { KeelRequest } from './request-context';
import { validateRequest } from './validate-request';

// A service the gateway has never heard of: three routes, declared with `forward` only.
const noteBody = z.object({ text: z.string().min(1) }).strict();
const noteAnswer = z.object({ id: z.string(), tenantId: z.string(), text: z.string(), position: z.number() });
const rpc = {
  addNote: command('notes', 'add', {
    summary: 'Add a note',
    request: commandRequest(z.object({ tenantId: z.string(), data: noteBody }).strict()),
    response: noteAnswer,
  }),
  removeNote: command('notes', 'remove', {
    summary: 'Remove a note',
    request: commandRequest(z.object({ tenantId: z.string(), noteId: z.string() }).strict()),
    response: z.object({ position: z.number() }),
  }),
  notes: query('notes', 'list', {
    summary: 'Notes of a tenant',
    request: z.object({ tenantId: z.string(), author: z.string().optional() }).strict(),
    response: z.object({ items: z.array(noteAnswer) }),
  }),
};
const inTenant = { tenantParam: 'tenantId', tag: 'notes', permission: 'users:read' } as const;
const noteRoutes = routeGroup({
  add: route({
    ...inTenant, method: 'POST', path: '/api/v1/tenants/{tenantId}/notes', summary: 'Add a note',
    params: z.object({ tenantId: z.string() }).strict(), body: noteBody, response: { status: 201, schema: noteAnswer },
    forward: { rpc: rpc.addNote, location: (note) => `/api/v1/tenants/${note.tenantId}/notes/${note.id}` },
  }),
  remove: route({
    ...inTenant, method: 'DELETE', path: '/api/v1/tenants/{tenantId}/notes/{noteId}', summary: 'Remove a note',
    params: z.object({ tenantId: z.string(), noteId: z.string() }).strict(), response: { status: 204, schema: null },
    forward: { rpc: rpc.removeNote, withPermissions: true },
  }),
  list: route({
    ...inTenant, method: 'GET', path: '/api/v1/tenants/{tenantId}/notes', summary: 'Notes',
    params: z.object({ tenantId: z.string() }).strict(), query: z.object({ author: z.string().optional() }).strict(),
    response: { status: 200, schema: rpc.notes.response },
    forward: {
      rpc: rpc.notes,
      request: ({ params, query: q }) => {
        if (q.author === 'nobody') throw new KeelError('not_found', 'No such author.');
        return { tenantId: params.tenantId, ...(q.author ? { author: q.author } : {}) };
      },
    },
  }),
});

/** What the RPC layer was asked: the subject and the request, answered as the service would. */
const calls: { subject: string; request: unknown }[] = [];
class RecordingRpc {
  async call(decl: RpcDecl, request: unknown): Promise<unknown> {
    calls.push({ subject: decl.subject, request });
    if (decl === rpc.addNote) return { id: 'n1', tenantId: 't1', text: 'hello', position: 7 };
    if (decl === rpc.removeNote) return { position: 8 };
    return { items: [] };
  }
}

/** Stands in for the real guard (tested on its own): a signed-in user of tenant t1, then the validator. */
@Injectable()
class SignedInGuard implements CanActivate {
  constructor(private readonly reflector: Reflector) {}
  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<KeelRequest>();
    req.correlationId = 'c-1';
    req.principal = { actor: { kind: 'user', id: 'u1', tenantId: 't1' }, permissions: new Set(['users:read']), tenantId: 't1', crossTenant: false };
    validateRequest(this.reflector.get<EndpointSpec>(ENDPOINT, context.getHandler()), req);
    return true;
  }
}

describe('routes declared with forward', () => {
  let app: NestFastifyApplication;
  let base: string;
  /** A real HTTP request (the app listens on a free port). */
  const send = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${base}${path}`, { method, ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
  };
  const controllers = forwardedRouteControllers({ notes: noteRoutes });

  beforeAll(async () => {
    @Module({
      controllers,
      providers: [
        { provide: TypedRpc, useClass: RecordingRpc },
        { provide: APP_GUARD, useClass: SignedInGuard },
        { provide: APP_FILTER, useClass: ProblemFilter },
        { provide: KEEL_LOGGER, useValue: { error: () => undefined, warn: () => undefined, info: () => undefined } },
      ],
    })
    class NotesOnly {}
    app = await NestFactory.create<NestFastifyApplication>(NotesOnly, new FastifyAdapter(), { logger: false, abortOnError: false });
    await app.listen(0, '127.0.0.1');
    base = await app.getUrl();
  });
  afterAll(() => app.close());
  beforeEach(() => calls.splice(0));

  it('are served by one controller per group, one method per route, named as the route', () => {
    expect(controllers.map((c) => c.name)).toEqual(['ForwardedNotesRoutes']);
    expect(Object.getOwnPropertyNames(controllers[0]!.prototype).filter((n) => n !== 'constructor').sort()).toEqual(['add', 'list', 'remove']);
  });

  it('send a command { meta, payload: { ...params, data: body } }, answer with the declared status and Location', async () => {
    const res = await send('POST', '/api/v1/tenants/t1/notes', { text: 'hello' });
    expect(res.status).toBe(201);
    expect(res.headers.get('location')).toBe('/api/v1/tenants/t1/notes/n1');
    expect(res.json()).toEqual({ id: 'n1', tenantId: 't1', text: 'hello', position: 7 });
    expect(calls).toEqual([
      { subject: 'cmd.notes.add', request: { meta: { actor: { kind: 'user', id: 'u1', tenantId: 't1' }, correlationId: 'c-1' }, payload: { tenantId: 't1', data: { text: 'hello' } } } },
    ]);
  });

  it('send a body-less command its path parameters, with the caller\'s permissions when declared, and answer 204 without a body', async () => {
    const res = await send('DELETE', '/api/v1/tenants/t1/notes/n1');
    expect(res.status).toBe(204);
    expect(res.text).toBe('');
    expect(calls).toEqual([
      {
        subject: 'cmd.notes.remove',
        request: { meta: { actor: { kind: 'user', id: 'u1', tenantId: 't1' }, correlationId: 'c-1', permissions: ['users:read'] }, payload: { tenantId: 't1', noteId: 'n1' } },
      },
    ]);
  });

  it('send a query what the declaration maps, and a refusal from the mapping is a problem+json', async () => {
    const ok = await send('GET', '/api/v1/tenants/t1/notes?author=ada');
    expect(ok.status).toBe(200);
    expect(calls).toEqual([{ subject: 'qry.notes.list', request: { tenantId: 't1', author: 'ada' } }]);
    const refused = await send('GET', '/api/v1/tenants/t1/notes?author=nobody');
    expect(refused.status).toBe(404);
    expect(refused.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(refused.json()).toMatchObject({ code: 'not_found', detail: 'No such author.' });
    expect(calls).toHaveLength(1);
  });

  it('refuse bad input before anything is sent', async () => {
    const res = await send('POST', '/api/v1/tenants/t1/notes', { text: '', extra: 1 });
    expect(res.status).toBe(400);
    expect(res.json().errors.map((e: { field: string }) => e.field).sort()).toEqual(['(whole)', 'text']);
    expect(calls).toEqual([]);
  });

  it('never let a query string replace a path parameter, and refuse a query on a route that declares none', async () => {
    const caller = { meta: { actor: { kind: 'user' as const, id: 'u1' }, correlationId: 'c' }, permissions: [], tenantId: 't1', crossTenant: false };
    const loose = { ...noteRoutes.list, query: z.object({ tenantId: z.string().optional() }), forward: { rpc: rpc.notes } };
    expect(forwardedRequest(loose, { params: { tenantId: 't1' }, query: { tenantId: 't2' }, body: undefined }, caller)).toEqual({ tenantId: 't1' });
    const undeclared = { ...noteRoutes.list, query: undefined, forward: { rpc: rpc.notes } };
    expect(forwardedRequest(undeclared, { params: { tenantId: 't1' }, query: { tenantId: 't2' }, body: undefined }, caller)).toEqual({ tenantId: 't1' });

    const res = await send('DELETE', '/api/v1/tenants/t1/notes/n1?tenantId=t2');
    expect(res.status).toBe(400);
    expect(res.json().errors).toEqual([{ in: 'query', field: '(whole)', message: 'this route takes no query parameters' }]);
    expect(calls).toEqual([]);
  });

  it('cannot forward a public route to a command (a command needs an actor)', () => {
    const open = routeGroup({
      add: route({ method: 'POST', path: '/api/v1/open', permission: 'public', tag: 'notes', summary: 'x', body: noteBody, response: { status: 201, schema: noteAnswer }, forward: { rpc: rpc.addNote } }),
    });
    expect(() => forwardedRouteControllers({ open })).toThrow(/notes\.add forwards to the command cmd\.notes\.add without a caller/);
  });
});
