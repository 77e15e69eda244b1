import { projectionTablesSql } from './projection';
import { projectionCheck, ProjectionRunner } from './projection-runner';
import { projectionShadowSql, shadowSchema } from './shadow';

describe('projectionTablesSql', () => {
  it('creates the checkpoint and dead-letter tables in the given schema, idempotently, with the resolution and rebuild columns', () => {
    const sql = projectionTablesSql('billing');
    expect(sql[0]).toMatch(/CREATE TABLE IF NOT EXISTS "billing"\.projection_checkpoints/);
    expect(sql[1]).toMatch(/CREATE TABLE IF NOT EXISTS "billing"\.dead_letters/);
    for (const column of ['resolution', 'resolved_at', 'resolved_by', 'rebuilding_since', 'held_until']) {
      expect(sql.some((s) => new RegExp(`ADD COLUMN IF NOT EXISTS ${column}\\b`).test(s))).toBe(true);
    }
    expect(sql.every((s) => /IF NOT EXISTS/.test(s))).toBe(true);
  });
});

describe('projectionShadowSql', () => {
  it('copies each table into the shadow schema with its tenant policy and the role allowed to fill it', () => {
    const sql = projectionShadowSql('billing', 'keel_billing', [{ name: 'rollups', tenantColumn: 'tenant_id' }, { name: 'prices' }]);
    expect(shadowSchema('billing')).toBe('billing_rebuild');
    expect(sql).toContain('CREATE TABLE IF NOT EXISTS "billing_rebuild".rollups (LIKE "billing".rollups INCLUDING ALL)');
    expect(sql.filter((s) => /CREATE POLICY tenant_isolation ON "billing_rebuild"\.rollups USING \(tenant_id::text = /.test(s))).toHaveLength(1);
    expect(sql.some((s) => /POLICY .*prices/.test(s))).toBe(false);
    expect(sql).toContain('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "billing_rebuild".prices TO keel_billing');
  });
});

describe('projectionCheck', () => {
  const runner = (health: { healthy: boolean; leader: boolean; running?: boolean; lastError?: string; deadLetters?: number }) =>
    ({ health: () => ({ running: true, deadLetters: 0, ...health, checkpoint: 7 }) }) as unknown as ProjectionRunner;

  it('is ready on an applying leader and on a standby, not on a leader that cannot apply', async () => {
    expect((await projectionCheck(runner({ healthy: true, leader: true })).check()).ok).toBe(true);
    expect((await projectionCheck(runner({ healthy: false, leader: false, lastError: 'x' })).check()).ok).toBe(true);
    const failing = await projectionCheck(runner({ healthy: false, leader: true, lastError: 'database gone' })).check();
    expect(failing).toMatchObject({ ok: false, detail: { checkpoint: 7 } });
    expect((await projectionCheck(runner({ healthy: false, leader: true, running: false })).check()).ok).toBe(false);
  });

  it('reports dead letters without taking the service out of rotation', async () => {
    const withLetters = await projectionCheck(runner({ healthy: false, leader: true, deadLetters: 2 })).check();
    expect(withLetters).toMatchObject({ ok: true, detail: { healthy: false, deadLetters: 2 } });
  });
});
