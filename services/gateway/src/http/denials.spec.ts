import { EventEnvelope } from '@keel/contracts';
import { EventStore } from '@keel/messaging';
import { createLogger } from '@keel/observability';
import { KeelConfig } from '@keel/config';
import { DenialRecorder, MAX_PRINCIPALS } from './denials';
import { Principal } from './request-context';

const principal = (id: string): Principal => ({ actor: { kind: 'user', id, tenantId: 't1' }, permissions: new Set(), tenantId: 't1', crossTenant: false });

function recorder(windowSeconds = 60) {
  const appended: EventEnvelope[] = [];
  const store = { appendFacts: async (facts: EventEnvelope[]) => (appended.push(...facts), facts.map((_, i) => i + 1)) } as unknown as EventStore;
  const r = new DenialRecorder(store, { KEEL_DENIAL_WINDOW_SECONDS: windowSeconds } as KeelConfig, createLogger('denials-test', 'silent'));
  return { r, appended };
}

describe('DenialRecorder', () => {
  it('records the first refusal of a window at once and the rest as one count when the window closes', async () => {
    const { r, appended } = recorder(60);
    const t0 = 120_000; // a window boundary
    r.record(principal('u1'), 'POST', '/a', 'c1', t0 + 1);
    for (let i = 0; i < 9; i++) r.record(principal('u1'), 'GET', '/b', 'c2', t0 + 2 + i);
    expect(appended.map((e) => e.data.count)).toEqual([1]);
    // The next window's first refusal closes this one.
    r.record(principal('u1'), 'GET', '/b', 'c3', t0 + 60_000);
    expect(appended.map((e) => e.data.count)).toEqual([1, 9, 1]);
    expect(appended[1]!.data.routes).toEqual([{ method: 'GET', route: '/b', count: 9 }]);
    expect(appended[0]!.aggregateId).toBe(appended[1]!.aggregateId);
    expect(appended[2]!.aggregateId).not.toBe(appended[0]!.aggregateId);
    // Ids are derived: the same window and record always give the same id (a retried publish is stored once).
    expect(new Set(appended.map((e) => e.id)).size).toBe(3);
    await r.onModuleDestroy();
  });

  it('says at shutdown what is still pending', async () => {
    const { r, appended } = recorder(60);
    r.record(principal('u1'), 'GET', '/b', 'c1', 1_000);
    r.record(principal('u1'), 'GET', '/b', 'c1', 1_001);
    await r.onModuleDestroy();
    expect(appended.map((e) => e.data.count)).toEqual([1, 1]);
  });

  it(`follows at most ${MAX_PRINCIPALS} principals a window`, async () => {
    const { r, appended } = recorder(60);
    for (let i = 0; i < MAX_PRINCIPALS + 50; i++) r.record(principal(`u${i}`), 'GET', '/b', 'c', 1_000);
    expect(r.size).toBe(MAX_PRINCIPALS);
    expect(appended).toHaveLength(MAX_PRINCIPALS);
    await r.onModuleDestroy();
  });
});
