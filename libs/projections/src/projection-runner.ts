import { DataSource, EntityManager } from 'typeorm';
import { Gauge } from 'prom-client';
import { auditQueries, KeelError, PositionedEvent, ReplayPage, subjects } from '@keel/contracts';
import { DeadLetter, DeliveredEvent, DurableEventConsumer, durableName, Messaging, RpcClient } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { AdvisoryLeadership, ALL_TENANTS, scopeTransaction } from '@keel/database';
import { Projection } from './projection';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let lagGauge: Gauge | undefined;
function projectionLag(): Gauge {
  lagGauge ??= new Gauge({
    name: 'keel_projection_lag_events',
    help: 'Stream last sequence minus the projection checkpoint',
    labelNames: ['projection'],
    registers: [metricsRegistry],
  });
  return lagGauge;
}

export interface ProjectionRunnerOptions {
  ds: DataSource;
  messaging: Messaging;
  rpc: RpcClient;
  logger: Logger;
  schema: string;
  projection: Projection;
  batchSize?: number;
}

/**
 * Runs one projection: a single active replica consumes its events, applying each batch and
 * the new checkpoint in one transaction; it can be rebuilt from the ledger and answers
 * "have you reached position N yet".
 */
export class ProjectionRunner {
  readonly consumer: DurableEventConsumer;
  private readonly leadership: AdvisoryLeadership;
  private checkpoint = 0;
  private readonly table: string;
  private lagTimer?: NodeJS.Timeout;

  constructor(private readonly o: ProjectionRunnerOptions) {
    const p = o.projection;
    this.table = `"${o.schema}".projection_checkpoints`;
    this.leadership = new AdvisoryLeadership(o.ds, `keel.projection.${o.messaging.stream}.${o.schema}.${p.name}`);
    const filter = p.contexts.length === 1 ? subjects.contextEvents(o.messaging.prefix, p.contexts[0]!) : subjects.allEvents(o.messaging.prefix);
    this.consumer = new DurableEventConsumer(o.messaging, {
      name: durableName('', `${o.schema}-${p.name}`),
      filterSubject: filter,
      logger: o.logger,
      batchSize: o.batchSize ?? 256,
      position: () => this.readCheckpoint(),
      handle: (batch) => this.applyBatch(batch),
      deadLetter: (letter) => this.recordDeadLetter(letter),
      acquireLeadership: () => this.leadership.acquire(),
      releaseLeadership: () => this.leadership.release(),
      confirmLeadership: () => this.leadership.stillHeld(),
    });
  }

  get name(): string {
    return this.o.projection.name;
  }

  async start(): Promise<void> {
    await this.o.ds.query(`INSERT INTO ${this.table} (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`, [this.name]);
    this.checkpoint = await this.readCheckpoint();
    this.consumer.start();
    const gauge = projectionLag();
    this.lagTimer = setInterval(() => {
      void this.lag()
        .then((lag) => gauge.set({ projection: this.name }, lag))
        .catch(() => undefined);
    }, 5_000);
    this.lagTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.lagTimer);
    await this.consumer.stop();
  }

  async readCheckpoint(manager: EntityManager = this.o.ds.manager): Promise<number> {
    const rows = await manager.query(`SELECT position FROM ${this.table} WHERE name = $1`, [this.name]);
    return rows.length ? Number(rows[0].position) : 0;
  }

  async lag(): Promise<number> {
    const info = await this.o.messaging.jsm.streams.info(this.o.messaging.stream);
    return Math.max(0, info.state.last_seq - (await this.readCheckpoint()));
  }

  private async applyBatch(batch: DeliveredEvent[]): Promise<void> {
    let fresh: PositionedEvent[] = [];
    let result: unknown;
    await this.o.ds.transaction(async (manager) => {
      await scopeTransaction(manager, ALL_TENANTS);
      // The row lock serialises writers; the position read under it is the truth.
      const [row] = await manager.query(`SELECT position FROM ${this.table} WHERE name = $1 FOR UPDATE`, [this.name]);
      const position = Number(row.position);
      fresh = batch.filter((d) => d.position > position).map((d) => ({ position: d.position, event: d.event }));
      if (!fresh.length) return;
      result = await this.o.projection.apply(manager, fresh);
      await manager.query(`UPDATE ${this.table} SET position = $2, updated_at = now() WHERE name = $1`, [
        this.name,
        fresh[fresh.length - 1]!.position,
      ]);
    });
    if (fresh.length) {
      this.checkpoint = fresh[fresh.length - 1]!.position;
      await this.o.projection.afterCommit?.(result).catch((err) => this.o.logger.warn({ err }, 'afterCommit failed'));
    }
  }

  private async recordDeadLetter(letter: DeadLetter): Promise<void> {
    await this.o.ds.transaction(async (manager) => {
      await manager.query(
        `INSERT INTO "${this.o.schema}".dead_letters (consumer, position, subject, payload, reason) VALUES ($1, $2, $3, $4, $5)`,
        [this.name, letter.position, letter.subject, letter.payload, letter.reason],
      );
      await manager.query(`UPDATE ${this.table} SET position = GREATEST(position, $2), updated_at = now() WHERE name = $1`, [this.name, letter.position]);
    });
  }

  /** Resolves once the projection has applied every event appended before this call. */
  async catchUp(timeoutMs: number): Promise<void> {
    const stream = await this.o.messaging.jsm.streams.info(this.o.messaging.stream);
    await this.waitFor(stream.state.last_seq, timeoutMs);
  }

  /**
   * Resolves once the projection has applied everything up to `position`: its checkpoint
   * reached it, or its consumer has nothing left to deliver or settle (no event of this
   * projection lies between the checkpoint and `position`).
   */
  async waitFor(position: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let polls = 0;
    for (;;) {
      if (this.checkpoint >= position) return;
      const checkpoint = await this.readCheckpoint();
      this.checkpoint = Math.max(this.checkpoint, checkpoint);
      if (checkpoint >= position) return;
      if (polls++ % 4 === 0) {
        const info = await this.o.messaging.jsm.consumers.info(this.o.messaging.stream, this.consumer.health().name).catch(() => null);
        if (info && info.num_pending === 0 && info.num_ack_pending === 0 && info.delivered.stream_seq >= checkpoint) {
          const stream = await this.o.messaging.jsm.streams.info(this.o.messaging.stream);
          if (stream.state.last_seq >= position) return;
        }
      }
      if (Date.now() >= deadline) {
        throw new KeelError(
          'consistency_timeout',
          `The ${this.name} read model has not reached position ${position} within ${timeoutMs} ms; retry shortly.`,
        );
      }
      await sleep(20);
    }
  }

  /**
   * Drops the read model and rebuilds it from the ledger (the audit service's replay query)
   * in one transaction, then continues live from the stream right after the last replayed
   * position. Returns that position.
   */
  async rebuild(): Promise<number> {
    const p = this.o.projection;
    await this.consumer.stop();
    try {
      const position = await this.o.ds.transaction(async (manager) => {
        await scopeTransaction(manager, ALL_TENANTS);
        await manager.query(`SELECT position FROM ${this.table} WHERE name = $1 FOR UPDATE`, [this.name]);
        if (p.tables.length) await manager.query(`TRUNCATE ${p.tables.map((t) => `"${this.o.schema}".${t}`).join(', ')}`);
        let after = 0;
        for (;;) {
          const page = await this.o.rpc.request<ReplayPage>(`qry.audit.${auditQueries.replay}`, {
            afterSeq: after,
            limit: 2_000,
            contexts: p.contexts,
          });
          if (page.events.length) await p.apply(manager, page.events);
          if (page.scannedTo <= after || page.scannedTo >= page.headSeq) {
            after = Math.max(after, page.scannedTo);
            break;
          }
          after = page.scannedTo;
        }
        await manager.query(`UPDATE ${this.table} SET position = $2, updated_at = now() WHERE name = $1`, [this.name, after]);
        return after;
      });
      this.checkpoint = position;
      await p.afterRebuild?.();
      await this.consumer.reposition(position);
      this.o.logger.info({ projection: this.name, position }, 'projection rebuilt from the ledger');
      return position;
    } finally {
      this.consumer.start();
    }
  }

  health() {
    return { ...this.consumer.health(), checkpoint: this.checkpoint };
  }
}

/** Readiness of a projection: the standby is ready; the active replica while it applies cleanly. */
export const projectionCheck = (runner: ProjectionRunner) => ({
  name: 'projection',
  check: async () => ({ ok: runner.health().healthy || !runner.health().leader, detail: runner.health() }),
});
