import { DataSource, EntityManager } from 'typeorm';
import { Counter } from 'prom-client';
import { EventEnvelope, subjects, validateEnvelope } from '@keel/contracts';
import { DeliveredEvent, DurableEventConsumer, EventStore, Messaging } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { AdvisoryLeadership, ALL_TENANTS, scopeTransaction } from '@keel/database';
import { SigningKeys, signCheckpoint } from '../signing/signing-keys';
import { LedgerRepository, Tail } from './ledger.repository';

const appended = new Counter({ name: 'keel_ledger_appended_total', help: 'Events appended to the ledger', registers: [metricsRegistry] });

/**
 * Appends every event of the stream to the ledger, in stream order, exactly once: a single
 * active writer (advisory lock), the tail re-read under a transaction lock, positions at or
 * below the tail skipped, and any gap filled from the stream by sequence before going on.
 * It never skips an event: one it cannot append stops it (unhealthy) until repaired.
 */
export class LedgerWriter {
  readonly consumer: DurableEventConsumer;
  private readonly leadership: AdvisoryLeadership;
  private checkpointTimer?: NodeJS.Timeout;

  constructor(
    private readonly ds: DataSource,
    private readonly repo: LedgerRepository,
    private readonly store: EventStore,
    m: Messaging,
    private readonly logger: Logger,
    private readonly keys: SigningKeys,
    private readonly checkpoints: { every: number; intervalMs: number },
  ) {
    this.leadership = new AdvisoryLeadership(ds, `keel.ledger.${m.stream}`);
    this.consumer = new DurableEventConsumer(m, {
      name: 'audit-ledger',
      filterSubject: subjects.allEvents(m.prefix),
      logger,
      batchSize: 500,
      position: async () => (await this.repo.tail()).seq,
      handle: (batch) => this.append(batch),
      acquireLeadership: () => this.leadership.acquire(),
      releaseLeadership: () => this.leadership.release(),
      confirmLeadership: () => this.leadership.stillHeld(),
    });
  }

  start(): void {
    this.consumer.start();
    // Entries that arrive slowly are still covered by a signature within the interval.
    this.checkpointTimer = setInterval(() => {
      if (!this.consumer.health().leader) return;
      void this.ds
        .transaction(async (m) => {
          await scopeTransaction(m, ALL_TENANTS);
          await m.query('SELECT pg_advisory_xact_lock(hashtext($1))', ['keel.ledger.append']);
          const tail = await this.repo.tail(m);
          if (tail.seq > (await this.repo.lastCheckpointSeq(m))) await this.sign(m, tail);
        })
        .catch((err) => this.logger.warn({ err }, 'could not sign a ledger checkpoint'));
    }, this.checkpoints.intervalMs);
    this.checkpointTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.checkpointTimer);
    await this.consumer.stop();
  }

  private async sign(manager: EntityManager, entry: Tail): Promise<void> {
    const key = await this.keys.active();
    const signedAt = new Date().toISOString();
    const signature = signCheckpoint(key, { seq: entry.seq, hash: entry.hash, signedAt });
    await this.repo.insertCheckpoint(manager, { seq: entry.seq, hash: entry.hash, signedAt, keyId: key.keyId, signature });
  }

  private async append(batch: DeliveredEvent[]): Promise<void> {
    await this.ds.transaction(async (manager) => {
      await scopeTransaction(manager, ALL_TENANTS);
      await manager.query('SELECT pg_advisory_xact_lock(hashtext($1))', ['keel.ledger.append']);
      const tail: Tail = await this.repo.tail(manager);
      const fresh = batch.filter((d) => d.position > tail.seq).sort((a, b) => a.position - b.position);
      if (!fresh.length) return;
      const rows: { position: number; event: EventEnvelope }[] = [];
      let expected = tail.seq + 1;
      for (const d of fresh) {
        if (d.position < expected) continue;
        while (expected < d.position) {
          rows.push({ position: expected, event: await this.fromStream(expected) });
          expected++;
        }
        rows.push({ position: d.position, event: d.event });
        expected = d.position + 1;
      }
      const written = await this.repo.append(manager, tail, rows);
      // The fixed cadence: every `every`-th sequence is signed, in the same transaction.
      for (const entry of written) if (entry.seq % this.checkpoints.every === 0) await this.sign(manager, entry);
      appended.inc(rows.length);
    });
  }

  /** A gap in delivery is repaired from the stream itself; a sequence it lacks is an incident. */
  private async fromStream(position: number): Promise<EventEnvelope> {
    const stored = await this.store.readPosition(position);
    if (!stored) throw new Error(`ledger incident: stream sequence ${position} is missing from the stream`);
    this.logger.warn({ position }, 'ledger gap repaired from the stream');
    return validateEnvelope(stored.event);
  }

  health() {
    return this.consumer.health();
  }
}
