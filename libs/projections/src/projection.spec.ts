import { projectionTablesSql } from './projection';
import { projectionCheck, ProjectionRunner } from './projection-runner';

describe('projectionTablesSql', () => {
  it('creates the checkpoint and dead-letter tables in the given schema, idempotently', () => {
    const sql = projectionTablesSql('billing');
    expect(sql).toHaveLength(2);
    expect(sql[0]).toMatch(/CREATE TABLE IF NOT EXISTS "billing"\.projection_checkpoints/);
    expect(sql[1]).toMatch(/CREATE TABLE IF NOT EXISTS "billing"\.dead_letters/);
  });
});

describe('projectionCheck', () => {
  const runner = (health: { healthy: boolean; leader: boolean }) => ({ health: () => ({ ...health, checkpoint: 7 }) }) as unknown as ProjectionRunner;

  it('is ready on a healthy leader and on a standby, not on an unhealthy leader', async () => {
    expect((await projectionCheck(runner({ healthy: true, leader: true })).check()).ok).toBe(true);
    expect((await projectionCheck(runner({ healthy: false, leader: false })).check()).ok).toBe(true);
    const failing = await projectionCheck(runner({ healthy: false, leader: true })).check();
    expect(failing).toMatchObject({ ok: false, detail: { checkpoint: 7 } });
  });
});
