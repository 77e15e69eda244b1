import { DataSource, QueryRunner } from 'typeorm';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Ends a runner's session instead of giving it back to the pool (pg destroys a client released with an error). */
async function discard(runner: QueryRunner, error: unknown): Promise<void> {
  const pg = runner as QueryRunner & { releasePostgresConnection?: (err?: unknown) => Promise<void> };
  if (pg.releasePostgresConnection) await pg.releasePostgresConnection(error ?? new Error('discarded')).catch(() => undefined);
  else await runner.release().catch(() => undefined);
}

/**
 * Single active replica per key: a session-level Postgres advisory lock held on a
 * dedicated connection. Losing that connection loses the lock, and `lost` reports it.
 */
export class AdvisoryLeadership {
  private runner?: QueryRunner;
  private held = false;
  private released = false;

  constructor(private readonly ds: DataSource, private readonly key: string, private readonly pollMs = 1_000) {}

  get isLeader(): boolean {
    return this.held;
  }

  /** Resolves once this replica holds the lock. */
  async acquire(): Promise<void> {
    this.released = false;
    for (;;) {
      if (this.released) throw new Error(`leadership of ${this.key} was released while waiting`);
      try {
        this.runner ??= this.ds.createQueryRunner();
        await this.runner.connect();
        const runner = this.runner;
        const [row] = await runner.query('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [this.key]);
        if (row.ok) {
          if (this.released) {
            // Released while the lock was being taken: give it back rather than lead.
            await runner.query('SELECT pg_advisory_unlock(hashtext($1))', [this.key]).catch(() => undefined);
            await runner.release().catch(() => undefined);
            throw new Error(`leadership of ${this.key} was released while waiting`);
          }
          this.held = true;
          return;
        }
      } catch (error) {
        if (this.released) throw error;
        const runner = this.runner;
        this.runner = undefined;
        if (runner) await discard(runner, error);
      }
      await sleep(this.pollMs);
    }
  }

  /** True while the lock's connection still answers. */
  async stillHeld(): Promise<boolean> {
    const runner = this.runner;
    if (!this.held || !runner) return false;
    try {
      await runner.query('SELECT 1');
      return true;
    } catch (error) {
      this.held = false;
      if (this.runner === runner) this.runner = undefined;
      // Not back to the pool: a session that is still alive (the check timed out, say) holds the lock.
      await discard(runner, error);
      return false;
    }
  }

  async release(): Promise<void> {
    this.released = true;
    const runner = this.runner;
    const held = this.held;
    this.runner = undefined;
    this.held = false;
    if (!runner) return;
    if (held) await runner.query('SELECT pg_advisory_unlock(hashtext($1))', [this.key]).catch(() => undefined);
    await runner.release().catch(() => undefined);
  }
}
