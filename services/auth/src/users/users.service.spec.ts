import 'reflect-metadata';
import { KeelError } from '@keel/contracts';
import { UsersService } from './users.service';

/**
 * UsersService against a fake DataSource (every statement recorded, failures injected) and a
 * fake command handler: what reaches Postgres, in which order relative to the log's append.
 */
type Step = { sql: string; params: unknown[] };

function fakeDataSource(fail: (sql: string) => boolean, rows: (sql: string) => unknown[] | undefined = () => undefined) {
  const log: Step[] = [];
  const m = {
    async query(sql: string, params: unknown[] = []) {
      const s = sql.replace(/\s+/g, ' ').trim();
      if (s.startsWith('SELECT set_config')) return [];
      log.push({ sql: s, params });
      if (fail(s)) throw new Error('Connection terminated unexpectedly');
      const answer = rows(s);
      if (answer) return answer;
      if (s.includes('count(*)::int AS n FROM')) return [{ n: 0 }];
      if (s.startsWith('INSERT INTO "auth".email_reservations')) return [{ user_id: params[2] }];
      if (s.startsWith('DELETE') || s.startsWith('UPDATE')) return [[], 1];
      return [];
    },
  };
  const ds = { transaction: async (fn: (x: typeof m) => unknown) => fn(m), query: (sql: string, p: unknown[]) => m.query(sql, p) };
  return { ds, log };
}

const systemMeta = { actor: { kind: 'system' as const, id: 'test' }, correlationId: 'c-1' };
const userState = { status: 'active' as const, email: 'ada@acme.test', name: 'Ada', roles: [], createdAt: '2024-01-01T00:00:00.000Z', updatedAt: '2024-01-01T00:00:00.000Z' };
const userId = '0190f2a0-0000-7000-8000-000000000001';

function service(ds: unknown, handler: object, revoker: object = {}) {
  const svc = new UsersService({} as never, ds as never, {} as never, revoker as never, { roles: async () => new Map<string, string[]>() } as never);
  // A create with a command id first asks the log whether that user was erased since: here, never created.
  (svc as unknown as { handler: object }).handler = { load: async () => ({ state: { status: 'none' }, version: 0, position: 0 }), ...handler };
  return svc;
}

describe('UsersService.createUser', () => {
  it('keeps the email reservation and answers 503 when the hash write fails after the user is on the log', async () => {
    let failCredentials = true;
    const { ds, log } = fakeDataSource((s) => {
      if (s.startsWith('INSERT INTO "auth".credentials') && failCredentials) {
        failCredentials = false;
        return true;
      }
      return false;
    });
    const handled: unknown[] = [];
    const handler = {
      handle: async (...args: unknown[]) => {
        handled.push(args);
        // The first call appends; a retry with the same command id is answered from the log.
        return { state: userState, version: 1, position: 42, events: handled.length === 1 ? [{ type: 'auth.user.created' }] : [] };
      },
    };
    const svc = service(ds, handler);
    const meta = { ...systemMeta, commandId: 'idem-1' };
    const u = { email: 'ada@acme.test', name: 'Ada', roles: [], password: 'correct horse battery' };

    const error = await svc.createUser('platform', u, meta, '*').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeelError);
    expect((error as KeelError).code).toBe('service_unavailable');
    expect(log.some((l) => l.sql.startsWith('DELETE FROM "auth".email_reservations'))).toBe(false);

    // The Idempotency-Key retry: the reservation is this user's, the log answers, the hash is filled in.
    log.length = 0;
    const retried = await svc.createUser('platform', u, meta, '*');
    expect(retried.state.id).toBeDefined();
    const credentials = log.filter((l) => l.sql.startsWith('INSERT INTO "auth".credentials'));
    expect(credentials).toHaveLength(1);
    expect(credentials[0]!.sql).toContain('ON CONFLICT (user_id) DO NOTHING');
    expect(log.some((l) => l.sql.startsWith('DELETE FROM "auth".email_reservations'))).toBe(false);
  });

  it('frees the email reservation when the append itself is refused', async () => {
    const { ds, log } = fakeDataSource(() => false);
    const svc = service(ds, { handle: async () => { throw new KeelError('conflict', 'refused'); } });
    await expect(svc.createUser('platform', { email: 'ada@acme.test', name: 'Ada', roles: [] }, systemMeta, '*')).rejects.toMatchObject({ code: 'conflict' });
    expect(log.filter((l) => l.sql.startsWith('DELETE FROM "auth".email_reservations'))).toHaveLength(1);
  });

  it('keeps the reservation when the log is unavailable (the event may still land)', async () => {
    const { ds, log } = fakeDataSource(() => false);
    const svc = service(ds, { handle: async () => { throw new KeelError('service_unavailable', 'no answer'); } });
    await expect(svc.createUser('platform', { email: 'ada@acme.test', name: 'Ada', roles: [] }, systemMeta, '*')).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(log.some((l) => l.sql.startsWith('DELETE FROM "auth".email_reservations'))).toBe(false);
  });
});

describe('UsersService password changes', () => {
  const adminMeta = { ...systemMeta, actor: { kind: 'user' as const, id: 'admin' }, permissions: '*' as const };
  const unavailable = () => { throw new KeelError('service_unavailable', 'The event log did not answer in time'); };

  function fixture(opts: { append: 'ok' | 'unavailable'; hashFails?: boolean; currentHash?: string }) {
    const order: string[] = [];
    const { ds, log } = fakeDataSource((s) => {
      if (s.startsWith('INSERT INTO "auth".credentials')) {
        order.push('hash');
        return !!opts.hashFails;
      }
      return false;
    }, (s) => (s.startsWith('SELECT password_hash') && opts.currentHash ? [{ password_hash: opts.currentHash }] : undefined));
    const handler = {
      load: async () => ({ state: userState, version: 3 }),
      handle: async () => {
        if (opts.append === 'unavailable') unavailable();
        order.push('append');
        return { state: userState, version: 4, position: 7, events: [{ type: 'auth.user.password_changed' }] };
      },
    };
    const revoker = { revokeUser: async () => { order.push('revoke'); return 1; } };
    return { svc: service(ds, handler, revoker), log, order };
  }

  it('a reset writes no hash and revokes nothing when the append fails', async () => {
    const { svc, log, order } = fixture({ append: 'unavailable' });
    await expect(svc.resetPassword({ meta: adminMeta, payload: { tenantId: 'platform', userId, data: { password: 'a brand new password' } } })).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(log.some((l) => l.sql.startsWith('INSERT INTO "auth".credentials'))).toBe(false);
    expect(order).toEqual([]);
  });

  it('a reset appends, then writes the hash, then revokes the sessions', async () => {
    const { svc, order } = fixture({ append: 'ok' });
    await svc.resetPassword({ meta: adminMeta, payload: { tenantId: 'platform', userId, data: { password: 'a brand new password' } } });
    expect(order).toEqual(['append', 'hash', 'revoke']);
  });

  it('a reset whose hash write fails after the append still revokes, and answers 503', async () => {
    const { svc, order } = fixture({ append: 'ok', hashFails: true });
    await expect(svc.resetPassword({ meta: adminMeta, payload: { tenantId: 'platform', userId, data: { password: 'a brand new password' } } })).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(order).toEqual(['append', 'hash', 'revoke']);
  });

  it('a change writes no hash when the append fails, and answers 503 when the hash write fails after it', async () => {
    const argon2 = await import('argon2');
    const current = await argon2.hash('the current password', { type: argon2.argon2id, memoryCost: 1024, timeCost: 1, parallelism: 1 });
    const body = { meta: { ...adminMeta, actor: { kind: 'user' as const, id: userId } }, payload: { tenantId: 'platform', userId, data: { currentPassword: 'the current password', newPassword: 'a brand new password' } } };

    const refused = fixture({ append: 'unavailable', currentHash: current });
    await expect(refused.svc.changePassword(body)).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(refused.order).toEqual([]);

    const ok = fixture({ append: 'ok', currentHash: current });
    await ok.svc.changePassword(body);
    expect(ok.order).toEqual(['append', 'hash']);

    const hashFails = fixture({ append: 'ok', hashFails: true, currentHash: current });
    await expect(hashFails.svc.changePassword(body)).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(hashFails.order).toEqual(['append', 'hash']);
  });
});
