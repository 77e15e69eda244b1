import { orderedShutdown } from './shutdown';

describe('orderedShutdown', () => {
  it('runs the steps in order, abandons one that hangs after its timeout, and still runs the rest', async () => {
    const ran: string[] = [];
    const warnings: string[] = [];
    const started = Date.now();
    const failed = await orderedShutdown(
      [
        { name: 'ops', timeoutMs: 1_000, run: async () => void ran.push('ops') },
        { name: 'app', timeoutMs: 100, run: () => new Promise(() => void ran.push('app')) },
        { name: 'broken', timeoutMs: 1_000, run: async () => { ran.push('broken'); throw new Error('boom'); } },
        { name: 'telemetry', timeoutMs: 1_000, run: async () => void ran.push('telemetry') },
      ],
      { warn: (_o: unknown, msg: string) => void warnings.push(msg) } as never,
    );
    expect(ran).toEqual(['ops', 'app', 'broken', 'telemetry']);
    expect(failed).toEqual(['app', 'broken']);
    expect(warnings).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('does not start a step before the previous one has finished', async () => {
    const events: string[] = [];
    await orderedShutdown(
      [
        { name: 'a', timeoutMs: 1_000, run: async () => { events.push('a start'); await new Promise((r) => setTimeout(r, 30)); events.push('a end'); } },
        { name: 'b', timeoutMs: 1_000, run: async () => void events.push('b start') },
      ],
      { warn: () => undefined } as never,
    );
    expect(events).toEqual(['a start', 'a end', 'b start']);
  });
});
