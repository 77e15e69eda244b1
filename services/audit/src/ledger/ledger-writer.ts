import { DataSource } from 'typeorm';
import { Counter } from 'prom-client';
import { subjects } from '@keel/contracts';
import { DurableEventConsumer, EventStore, Messaging, RawDelivery } from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { AdvisoryLeadership, ALL_TENANTS, scopeTransaction, withPooledClient } from '@keel/database';
import { SigningKeys, signCheckpoint } from '../signing/signing-keys';
import { LedgerRecord, toLedgerRecord } from './ledger-entry';
import { APPEND_LOCK, isDataError, LedgerRepository, PreparedAppend, Sql, Tail } from './ledger.repository';

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
  /** The ledger's tail as this writer's last commit left it; unknown after any failure. */
  private known?: Tail;

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
      position: async () => {
        // Delivery starts again from the ledger itself (a failure, a new leadership): forget the prediction.
        this.known = undefined;
        return (await this.repo.tail()).seq;
      },
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
          await m.query('SELECT pg_advisory_xact_lock(hashtext($1))', [APPEND_LOCK]);
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

  private async sign(manager: Sql, entry: Tail): Promise<void> {
    const key = await this.keys.active();
    const signedAt = new Date().toISOString();
    const signature = signCheckpoint(key, { seq: entry.seq, hash: entry.hash, signedAt });
    await this.repo.insertCheckpoint(manager, { seq: entry.seq, hash: entry.hash, signedAt, keyId: key.keyId, signature });
  }

  private async append(batch: RawDelivery[]): Promise<void> {
    const sorted = [...batch].sort((a, b) => a.position - b.position);
    // The tail this writer committed last, or (after a failure, a new leadership) read again. It
    // only predicts: the tail read under the lock in the transaction decides what is appended.
    const tail = this.known ?? (await this.repo.tail());
    this.known = undefined;
    // A gap in delivery is repaired from the stream itself, read before the transaction opens
    // (no network call inside it).
    const records = await this.withGapsFilled(tail.seq, sorted);
    if (!records.length) {
      this.known = tail;
      return;
    }
    // Chained and laid out before the transaction: it then holds the lock for one insert.
    const prepared = this.repo.prepare(tail, records);
    let outcome: { tail: Tail; flagged: LedgerRecord[] };
    try {
      outcome = await this.commit(prepared, false);
    } catch (error) {
      if (!isDataError(error)) throw error;
      // A value Postgres refuses: nothing of the batch was written; again, record by record.
      outcome = await this.commit(prepared, true);
    }
    this.known = outcome.tail;
    for (const r of outcome.flagged) {
      incidents.inc();
      this.logger.error({ position: r.position, problem: r.problem }, 'ledger incident: a message that is not a valid event envelope was appended');
    }
  }

  /**
   * One transaction on a pooled connection: lock, tail, insert, checkpoint signatures, commit, in
   * three round trips. `careful` inserts record by record behind savepoints, keeping what Postgres
   * refuses as bytes (see LedgerRepository.append).
   */
  private async commit(prepared: PreparedAppend, careful: boolean): Promise<{ tail: Tail; flagged: LedgerRecord[] }> {
    return withPooledClient(this.ds, async (client) => {
      const sql: Sql = { query: async (text, params) => (await client.query(text, params)).rows };
      const tail = await this.repo.beginAppend(client);
      const fresh = prepared.records.filter((r) => r.position > tail.seq);
      if (!fresh.length) {
        await client.query('COMMIT');
        return { tail, flagged: [] };
      }
      if (fresh[0]!.position !== tail.seq + 1) throw new Error(`the ledger tail moved to ${tail.seq} while a batch from ${fresh[0]!.position} was prepared; retrying`);
      const written = careful
        ? await this.repo.append(sql, tail, fresh)
        : await this.repo.insertPrepared(sql, tail.seq === prepared.tail.seq && tail.hash === prepared.tail.hash ? prepared : this.repo.prepare(tail, fresh));
      // The fixed cadence: every `every`-th sequence is signed, in the same transaction.
      for (const entry of written) if (entry.seq % this.checkpoints.every === 0) await this.sign(sql, entry);
      await client.query('COMMIT');
      appended.inc(fresh.length);
      return { tail: written[written.length - 1]!, flagged: fresh.filter((r) => r.problem !== null) };
    });
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
