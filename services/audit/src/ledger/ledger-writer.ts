import { DataSource, EntityManager } from 'typeorm';
import { Counter } from 'prom-client';
import { subjects } from '@keel/contracts';
import { DurableEventConsumer, EventStore, Messaging, RawDelivery } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { AdvisoryLeadership, ALL_TENANTS, scopeTransaction } from '@keel/database';
import { SigningKeys, signCheckpoint } from '../signing/signing-keys';
import { LedgerRecord, toLedgerRecord } from './ledger-entry';
import { LedgerRepository, Tail } from './ledger.repository';

const appended = new Counter({ name: 'keel_ledger_appended_total', help: 'Events appended to the ledger', registers: [metricsRegistry] });
const incidents = new Counter({
  name: 'keel_ledger_incidents_total',
  help: 'Messages appended to the ledger that are not valid event envelopes',
  registers: [metricsRegistry],
});

/**
 * Appends every message of the stream to the ledger, in stream order, exactly once: a single
 * active writer (advisory lock), the tail re-read under a transaction lock, positions at or
 * below the tail skipped, and any gap filled from the stream by sequence before going on.
 * It takes messages undecoded: whatever a message holds is stored and chained (an invalid one as
 * an incident, reported), so only the database or the stream being unavailable can hold it up,
 * and then it retries from its tail.
 */
export class LedgerWriter {
  readonly consumer: DurableEventConsumer;
  private readonly leadership: AdvisoryLeadership;
  private checkpointTimer?: NodeJS.Timeout;

  constructor(
    private readonly ds: DataSource,
    private readonly repo: LedgerRepository,
    private readonly store: EventStore,
    private readonly m: Messaging,
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
      handleRaw: (batch) => this.append(batch),
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

  private async append(batch: RawDelivery[]): Promise<void> {
    const sorted = [...batch].sort((a, b) => a.position - b.position);
    // A gap in delivery is repaired from the stream itself, read before the transaction opens
    // (no network call inside it); the tail read under the lock decides what is still needed.
    let tail = await this.repo.tail();
    const records = await this.withGapsFilled(tail.seq, sorted);
    let flagged: LedgerRecord[] = [];
    await this.ds.transaction(async (manager) => {
      await scopeTransaction(manager, ALL_TENANTS);
      await manager.query('SELECT pg_advisory_xact_lock(hashtext($1))', ['keel.ledger.append']);
      tail = await this.repo.tail(manager);
      const fresh = records.filter((r) => r.position > tail.seq);
      if (!fresh.length) return;
      if (fresh[0]!.position !== tail.seq + 1) throw new Error(`the ledger tail moved to ${tail.seq} while a batch from ${fresh[0]!.position} was prepared; retrying`);
      const written = await this.repo.append(manager, tail, fresh);
      // The fixed cadence: every `every`-th sequence is signed, in the same transaction.
      for (const entry of written) if (entry.seq % this.checkpoints.every === 0) await this.sign(manager, entry);
      appended.inc(fresh.length);
      flagged = fresh.filter((r) => r.problem !== null);
    });
    for (const r of flagged) {
      incidents.inc();
      this.logger.error({ position: r.position, problem: r.problem }, 'ledger incident: a message that is not a valid event envelope was appended');
    }
  }

  /** The batch's records with any missing sequence between the tail and them read from the stream. */
  private async withGapsFilled(tailSeq: number, sorted: RawDelivery[]): Promise<LedgerRecord[]> {
    const records: LedgerRecord[] = [];
    let expected = tailSeq + 1;
    for (const d of sorted) {
      if (d.position < expected) continue;
      while (expected < d.position) {
        const stored = await this.store.readRawPosition(expected);
        if (!stored) throw new Error(`ledger incident: stream sequence ${expected} is missing from the stream`);
        this.logger.warn({ position: expected }, 'ledger gap repaired from the stream');
        records.push(toLedgerRecord(expected, stored.data));
        expected++;
      }
      records.push(toLedgerRecord(d.position, d.data));
      expected = d.position + 1;
    }
    return records;
  }

  health() {
    return this.consumer.health();
  }

  /** Messages on the stream not yet in the ledger (its consumer's pending and unacknowledged). */
  async lag(): Promise<number> {
    const info = await this.m.jsm.consumers.info(this.m.stream, this.consumer.health().name).catch(() => null);
    if (info) return info.num_pending + info.num_ack_pending;
    const [stream, tail] = await Promise.all([this.m.jsm.streams.info(this.m.stream), this.repo.tail()]);
    return Math.max(0, stream.state.last_seq - tail.seq);
  }
}
