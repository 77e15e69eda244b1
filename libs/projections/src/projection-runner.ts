import { DataSource, EntityManager } from 'typeorm';
import { Gauge } from 'prom-client';
import { randomUUID } from 'node:crypto';
import {
  Actor, auditQueries, DeadLetterInfo, EventEnvelope, KeelError, nameBasedUuid, opsEventTypes, PLATFORM_TENANT, PositionedEvent, ProjectionStatus,
  RebuildResult, ReplayPage, storableText, subjects,
} from '@keel/contracts';
import {
  ConcurrencyConflict, DeadLetter, DeliveredEvent, DurableEventConsumer, durableName, EventStore, eventsOf, Messaging, RetryLaterError, RpcClient,
} from '@keel/messaging';
import { Logger, metricsRegistry } from '@keel/observability';
import { AdvisoryLeadership, ALL_TENANTS, scopeTransaction } from '@keel/database';
import { MAX_LISTED_CHANGES, Projection, RebuildChanges } from './projection';
import { shadowSchema } from './shadow';
import { registerRunner, unregisterRunner } from './projection-admin';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let deadLetterGauge: Gauge | undefined;
function projectionDeadLetters(): Gauge {
  deadLetterGauge ??= new Gauge({
    name: 'keel_projection_dead_letters',
    help: 'Unresolved dead letters of a projection (an operator retries or skips them)',
    labelNames: ['projection'],
    registers: [metricsRegistry],
  });
  return deadLetterGauge;
}

let lagGauge: Gauge | undefined;
function projectionLag(): Gauge {
  lagGauge ??= new Gauge({
    name: 'keel_projection_lag_events',
    help: 'Events of the projection\'s own subjects not yet applied',
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
  /** The service it belongs to: operators name it `<service>.<projection>`. Defaults to the schema. */
  service?: string;
}


/** The live model is held for a rebuild's swap: not applied now, retried from the checkpoint. */
class HeldForRebuild extends RetryLaterError {
  constructor(name: string) {
    super(`${name} is held while its rebuilt read model replaces the live one`);
    this.name = 'HeldForRebuild';
  }
}

const HOLD_SECONDS = 30;

/** Where a rebuild's time went (logged with its result). */
interface RebuildTimings {
  pages: number;
  /** Waiting for replay pages that had not come yet (the rest arrived while the page before was applied). */
  waitingForPagesMs: number;
  applyingMs: number;
  swapMs: number;
  /** The projection's afterRebuild (e.g. dropping a cache). */
  afterRebuildMs: number;
}
const STALE_REBUILD_MINUTES = 15;

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
  /** Unresolved dead letters, as the database has them (refreshed on start, on change and with the lag). */
  private unresolved = 0;
  private readonly store: EventStore;

  constructor(private readonly o: ProjectionRunnerOptions) {
    const p = o.projection;
    this.table = `"${o.schema}".projection_checkpoints`;
    this.store = new EventStore(o.messaging);
    this.leadership = new AdvisoryLeadership(o.ds, `keel.projection.${o.messaging.stream}.${o.schema}.${p.name}`);
    const filter =
      p.contexts.length !== 1
        ? subjects.allEvents(o.messaging.prefix)
        : p.aggregateType
          ? `${o.messaging.prefix}evt.*.${p.contexts[0]}.${p.aggregateType}.*`
          : subjects.contextEvents(o.messaging.prefix, p.contexts[0]!);
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

  get service(): string {
    return this.o.service ?? this.o.schema;
  }

  /** `<service>.<projection>`, as operators see it. */
  get qualifiedName(): string {
    return `${this.service}.${this.name}`;
  }

  get messaging(): Messaging {
    return this.o.messaging;
  }

  async start(): Promise<void> {
    await this.o.ds.query(`INSERT INTO ${this.table} (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`, [this.name]);
    this.checkpoint = await this.readCheckpoint();
    await this.refreshDeadLetters();
    this.consumer.start();
    registerRunner(this, this.o.logger);
    const gauge = projectionLag();
    this.lagTimer = setInterval(() => {
      void this.lag()
        .then((lag) => gauge.set({ projection: this.name }, lag))
        .catch(() => undefined);
      void this.refreshDeadLetters().catch(() => undefined);
    }, 5_000);
    this.lagTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.lagTimer);
    unregisterRunner(this);
    await this.consumer.stop();
  }

  private async refreshDeadLetters(): Promise<void> {
    const [row] = await this.o.ds.query(`SELECT count(*)::int AS n FROM "${this.o.schema}".dead_letters WHERE consumer = $1 AND resolution IS NULL`, [this.name]);
    this.unresolved = row.n;
    projectionDeadLetters().set({ projection: this.name }, this.unresolved);
  }

  async readCheckpoint(manager: EntityManager = this.o.ds.manager): Promise<number> {
    const rows = await manager.query(`SELECT position FROM ${this.table} WHERE name = $1`, [this.name]);
    return rows.length ? Number(rows[0].position) : 0;
  }

  /**
   * Events of its own subjects it has not applied: not yet delivered to its consumer, or delivered and
   * not yet settled. Events of other subjects are not its lag.
   */
  async lag(): Promise<number> {
    const info = await this.o.messaging.jsm.consumers.info(this.o.messaging.stream, this.consumer.health().name).catch(() => null);
    if (info) return info.num_pending + info.num_ack_pending;
    // Its consumer is not there (being recreated): at most everything after its checkpoint.
    const stream = await this.o.messaging.jsm.streams.info(this.o.messaging.stream);
    return Math.max(0, stream.state.last_seq - (await this.readCheckpoint()));
  }

  /**
   * The events with the personal fields of their bodies opened (`"[erased]"` once their subject is),
   * as a projection applies them; before any transaction opens (the keys may come over NATS).
   */
  private async opened<T extends PositionedEvent>(events: T[]): Promise<T[]> {
    const pd = this.o.messaging.personalData;
    return pd ? pd.openPositioned(events) : events;
  }

  private async applyBatch(delivered: DeliveredEvent[]): Promise<void> {
    let fresh: PositionedEvent[] = [];
    let result: unknown;
    const batch = await this.opened(delivered);
    await this.o.ds.transaction(async (manager) => {
      await scopeTransaction(manager, ALL_TENANTS);
      // The row lock serialises writers; the position read under it is the truth.
      const [row] = await manager.query(`SELECT position, coalesce(held_until > now(), false) AS held FROM ${this.table} WHERE name = $1 FOR UPDATE`, [this.name]);
      if (row.held) throw new HeldForRebuild(this.name);
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
      // Never during a rebuild's hold: the checkpoint must not move under the swap.
      const [held] = await manager.query(`SELECT coalesce(held_until > now(), false) AS held FROM ${this.table} WHERE name = $1 FOR UPDATE`, [this.name]);
      if (held?.held) throw new HeldForRebuild(this.name);
      await manager.query(
        `INSERT INTO "${this.o.schema}".dead_letters (consumer, position, subject, payload, reason) VALUES ($1, $2, $3, $4, $5)`,
        [this.name, letter.position, letter.subject, storableText(letter.payload, { multiline: true }), storableText(letter.reason, { multiline: true })],
      );
      await manager.query(`UPDATE ${this.table} SET position = GREATEST(position, $2), updated_at = now() WHERE name = $1`, [this.name, letter.position]);
    });
    this.unresolved++;
    projectionDeadLetters().set({ projection: this.name }, this.unresolved);
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
   * Rebuilds the read model from the ledger beside the live one, then replaces it; reads go on against
   * the live tables meanwhile, and live events keep being applied until the last moment. Any replica
   * may run it: the checkpoint row coordinates.
   *
   * 1. Claim the rebuild (one at a time per projection; a claim older than 15 minutes is stale).
   * 2. Empty the shadow tables and replay the ledger into them, page by page, each page in its own
   *    short transaction (no transaction is open during a replay request).
   * 3. Hold the live projection (it stops applying; its consumer retries from its checkpoint), catch
   *    the shadow up to at least the live checkpoint, and in one transaction replace the live rows with
   *    the shadow's and move the checkpoint to where the shadow is. The live consumer then continues
   *    after that position: nothing is skipped, nothing applied twice.
   * Dead letters stay as they were: a skipped event is skipped by the rebuild too; an event that fails
   * in the rebuild is dead-lettered if it was not already.
   */
  async rebuild(): Promise<RebuildResult> {
    // The claim is a token of this run: every later step acts only while the row still holds it, and
    // each page renews it, so a claim goes stale only when its rebuild has stopped.
    const claim = randomUUID();
    // TypeORM answers an UPDATE with [rows, count].
    const [claimed] = await this.o.ds.query(
      `UPDATE ${this.table} SET rebuilding_since = now(), rebuild_claim = $2
       WHERE name = $1 AND (rebuilding_since IS NULL OR rebuilding_since < now() - interval '${STALE_REBUILD_MINUTES} minutes') RETURNING name`,
      [this.name, claim],
    );
    if (!claimed.length) throw new KeelError('conflict', `A rebuild of ${this.qualifiedName} is already running.`);
    const renew = async () => {
      const [still] = await this.o.ds.query(`UPDATE ${this.table} SET rebuilding_since = now() WHERE name = $1 AND rebuild_claim = $2 RETURNING name`, [this.name, claim]);
      if (!still.length) throw new KeelError('conflict', `Another rebuild of ${this.qualifiedName} took over this one's stale claim.`);
    };
    const shadow = shadowSchema(this.o.schema);
    const tables = this.o.projection.tables;
    const started = performance.now();
    const timings: RebuildTimings = { pages: 0, waitingForPagesMs: 0, applyingMs: 0, swapMs: 0, afterRebuildMs: 0 };
    try {
      await this.inShadow(async (m) => {
        if (tables.length) await m.query(`TRUNCATE ${tables.map((t) => `"${shadow}".${t}`).join(', ')}`);
      });
      const skipped = new Set<number>(
        (await this.o.ds.query(`SELECT position FROM "${this.o.schema}".dead_letters WHERE consumer = $1 AND resolution = 'skipped'`, [this.name])).map(
          (r: { position: string }) => Number(r.position),
        ),
      );
      let at = 0;
      let replayed = 0;
      const appliedAt = new Set<number>();
      const replayTo = async (target: number) => {
        const deadline = Date.now() + 30_000;
        for (;;) {
          await renew();
          const r = await this.replayIntoShadow(at, skipped, appliedAt, timings);
          at = r.at;
          replayed += r.applied;
          if (at >= target) return;
          // The ledger is behind the live checkpoint: it follows the same stream, give it a moment.
          if (Date.now() > deadline) throw new KeelError('service_unavailable', `The ledger has not reached position ${target} yet; retry the rebuild.`);
          await sleep(50);
        }
      };
      await replayTo(0);
      for (let attempt = 1; attempt <= 5; attempt++) {
        await replayTo(await this.readCheckpoint());
        const [holding] = await this.o.ds.query(
          `UPDATE ${this.table} SET held_until = now() + interval '${HOLD_SECONDS} seconds' WHERE name = $1 AND rebuild_claim = $2 RETURNING name`,
          [this.name, claim],
        );
        if (!holding.length) throw new KeelError('conflict', `Another rebuild of ${this.qualifiedName} took over this one's stale claim.`);
        // Held: whatever batch was being applied has committed (the row lock), and no new one starts.
        await replayTo(await this.readCheckpoint());
        const swapping = performance.now();
        const changes: RebuildChanges = {};
        const swapped = await this.o.ds.transaction(async (m) => {
          await scopeTransaction(m, ALL_TENANTS);
          const [row] = await m.query(
            `SELECT position, coalesce(held_until > now(), false) AS held, rebuild_claim = $2 AS ours FROM ${this.table} WHERE name = $1 FOR UPDATE`,
            [this.name, claim],
          );
          if (!row.ours) throw new KeelError('conflict', `Another rebuild of ${this.qualifiedName} took over this one's stale claim.`);
          if (!row.held || Number(row.position) > at) return false;
          for (const t of tables) changes[t] = await this.replaceLiveRows(m, t);
          await m.query(
            `UPDATE ${this.table} SET position = $2, held_until = NULL, rebuilding_since = NULL, rebuild_claim = NULL, updated_at = now() WHERE name = $1`,
            [this.name, at],
          );
          // Open dead letters the rebuilt model applied are resolved with it: a later retry must not apply them twice.
          if (appliedAt.size) {
            await m.query(
              `UPDATE "${this.o.schema}".dead_letters SET resolution = 'retried', resolved_at = now(), resolved_by = 'rebuild'
               WHERE consumer = $1 AND resolution IS NULL AND position = ANY($2::bigint[])`,
              [this.name, [...appliedAt]],
            );
          }
          return true;
        });
        timings.swapMs += performance.now() - swapping;
        if (swapped) {
          this.checkpoint = Math.max(this.checkpoint, at);
          await this.refreshDeadLetters();
          const after = performance.now();
          await this.o.projection.afterRebuild?.(changes);
          timings.afterRebuildMs = performance.now() - after;
          const rounded = Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v)]));
          this.o.logger.info(
            { projection: this.qualifiedName, position: at, replayed, ms: Math.round(performance.now() - started), ...rounded },
            'projection rebuilt from the ledger beside the live one, and swapped in',
          );
          return { name: this.qualifiedName, position: at, replayed };
        }
        this.o.logger.warn({ projection: this.qualifiedName, attempt }, 'the hold ran out before the swap; catching up again');
      }
      throw new KeelError('service_unavailable', `The rebuilt ${this.qualifiedName} could not catch up with the live one; retry the rebuild.`);
    } finally {
      await this.o.ds
        .query(`UPDATE ${this.table} SET held_until = NULL, rebuilding_since = NULL, rebuild_claim = NULL WHERE name = $1 AND rebuild_claim = $2`, [this.name, claim])
        .catch((err) => this.o.logger.warn({ err }, 'could not release a rebuild claim; it goes stale by itself'));
    }
  }

  /**
   * Inside the swap's transaction: makes the live table hold exactly the shadow's rows, then empties the
   * shadow. With a primary key, only what differs is written: live rows with no equal shadow row (same key,
   * every column not distinct) are deleted, then shadow rows whose key is no longer live are inserted, so
   * a rebuild that agrees with the live model rewrites nothing (no dead rows, a shorter swap) and the table
   * never holds a row that is not the shadow's (its unique constraints hold throughout). Without a key, or
   * with a column type that has no equality, every row is replaced.
   */
  private async replaceLiveRows(m: EntityManager, table: string): Promise<RebuildChanges[string]> {
    const live = `"${this.o.schema}".${table}`;
    const shadow = `"${shadowSchema(this.o.schema)}".${table}`;
    const key: string[] = (
      await m.query(
        `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = $1::regclass AND i.indisprimary`,
        [live],
      )
    ).map((r: { attname: string }) => `"${r.attname.replace(/"/g, '""')}"`);
    let changed: RebuildChanges[string] | undefined;
    if (key.length) {
      const sameKey = key.map((c) => `s.${c} = l.${c}`).join(' AND ');
      // A data-modifying CTE runs to completion whatever its outer LIMIT: the rows are listed up to one past the most.
      const listed = MAX_LISTED_CHANGES + 1;
      await m.query('SAVEPOINT keel_swap_diff');
      try {
        const removed: Record<string, unknown>[] = await m.query(
          `WITH d AS (DELETE FROM ${live} l WHERE NOT EXISTS (SELECT 1 FROM ${shadow} s WHERE ${sameKey} AND ROW(s.*) IS NOT DISTINCT FROM ROW(l.*)) RETURNING l.*)
           SELECT * FROM d LIMIT ${listed}`,
        );
        const added: Record<string, unknown>[] = await m.query(
          `WITH i AS (INSERT INTO ${live} SELECT s.* FROM ${shadow} s WHERE NOT EXISTS (SELECT 1 FROM ${live} l WHERE ${sameKey}) RETURNING *)
           SELECT * FROM i LIMIT ${listed}`,
        );
        await m.query('RELEASE SAVEPOINT keel_swap_diff');
        changed = removed.length < listed && added.length < listed ? { removed, added } : 'all';
      } catch (error) {
        // A column type without equality (json, xml, point…), 42883: replace every row instead.
        const code = (error as { code?: string; driverError?: { code?: string } }).driverError?.code ?? (error as { code?: string }).code;
        if (code !== '42883') throw error;
        await m.query('ROLLBACK TO SAVEPOINT keel_swap_diff');
      }
    }
    if (!changed) {
      await m.query(`DELETE FROM ${live}`);
      await m.query(`INSERT INTO ${live} SELECT * FROM ${shadow}`);
      changed = 'all';
    }
    await m.query(`TRUNCATE ${shadow}`);
    return changed;
  }

  /** A transaction whose unqualified table names are the shadow tables, scoped to every tenant. */
  private inShadow<T>(work: (m: EntityManager) => Promise<T>): Promise<T> {
    return this.o.ds.transaction(async (m) => {
      // Both settings in one round trip (scopeTransaction's setting, with the search path).
      await m.query(`SELECT set_config('search_path', $1, true), set_config('keel.tenant_id', $2, true)`, [
        `"${shadowSchema(this.o.schema)}", "${this.o.schema}"`,
        ALL_TENANTS,
      ]);
      return work(m);
    });
  }

  /**
   * Replays the ledger after `after` into the shadow until its head; returns where it got and how
   * many it applied. The positions it applied are added to `appliedAt` (a rebuild resolves the open
   * dead letters it applied). Pipelined: the next page is asked for as soon as this one has come,
   * and arrives while this one is applied (pages are still applied one after the other, in order).
   */
  private async replayIntoShadow(
    after: number,
    skipped: Set<number>,
    appliedAt: Set<number>,
    timings: RebuildTimings,
  ): Promise<{ at: number; applied: number }> {
    const p = this.o.projection;
    const request = (afterSeq: number) => {
      const page = this.o.rpc.request<ReplayPage>(`qry.audit.${auditQueries.replay}`, { afterSeq, limit: 2_000, contexts: p.contexts });
      // Awaited below, unless applying the page before it failed: then its failure is not unhandled.
      page.catch(() => undefined);
      return page;
    };
    let applied = 0;
    let pending = request(after);
    for (;;) {
      const waited = performance.now();
      const page = await pending;
      timings.waitingForPagesMs += performance.now() - waited;
      timings.pages++;
      const next = Math.max(after, page.scannedTo);
      const last = next <= after || next >= page.headSeq;
      if (!last) pending = request(next);
      const applying = performance.now();
      const events = await this.opened(page.events.filter((e) => !skipped.has(e.position)));
      if (events.length) {
        try {
          await this.inShadow((m) => p.apply(m, events));
          for (const e of events) appliedAt.add(e.position);
        } catch {
          // Isolate what fails: each message on its own (a decision's events together, never half of
          // one); one that still fails is a dead letter.
          const byPosition = new Map<number, PositionedEvent[]>();
          for (const e of events) byPosition.set(e.position, [...(byPosition.get(e.position) ?? []), e]);
          for (const [position, group] of byPosition) {
            try {
              await this.inShadow((m) => p.apply(m, group));
              appliedAt.add(position);
            } catch (error) {
              await this.deadLetterOnce(group, (error as Error).message);
            }
          }
        }
        applied += events.length;
      }
      timings.applyingMs += performance.now() - applying;
      if (last) return { at: next, applied };
      after = next;
    }
  }

  private async deadLetterOnce(group: PositionedEvent[], reason: string): Promise<void> {
    const { position, event } = group[0]!;
    const existing = await this.o.ds.query(`SELECT 1 FROM "${this.o.schema}".dead_letters WHERE consumer = $1 AND position = $2`, [this.name, position]);
    if (existing.length) return;
    const payload = JSON.stringify(group.length === 1 ? event : group.map((g) => g.event));
    await this.o.ds.query(
      `INSERT INTO "${this.o.schema}".dead_letters (consumer, position, subject, payload, reason) VALUES ($1, $2, $3, $4, $5)`,
      [this.name, position, this.store.subjectOf(event), storableText(payload, { multiline: true }), storableText(`rebuild: ${reason}`, { multiline: true })],
    );
    this.unresolved++;
  }

  /** What an operator sees of it. */
  async status(): Promise<ProjectionStatus> {
    const [row] = await this.o.ds.query(`SELECT position, rebuilding_since FROM ${this.table} WHERE name = $1`, [this.name]);
    await this.refreshDeadLetters();
    const h = this.health();
    return {
      name: this.qualifiedName,
      service: this.service,
      checkpoint: Number(row?.position ?? 0),
      lag: await this.lag(),
      healthy: h.healthy,
      deadLetters: this.unresolved,
      leader: h.leader,
      ...(h.lastError ? { lastError: h.lastError } : {}),
      ...(row?.rebuilding_since ? { rebuildingSince: (row.rebuilding_since as Date).toISOString() } : {}),
    };
  }

  async deadLetters(resolved: boolean, limit: number): Promise<DeadLetterInfo[]> {
    const rows = await this.o.ds.query(
      `SELECT * FROM "${this.o.schema}".dead_letters WHERE consumer = $1 AND (resolution IS NOT NULL) = $2 ORDER BY position LIMIT $3`,
      [this.name, resolved, limit],
    );
    return rows.map((r: Record<string, unknown>) => this.toDeadLetter(r));
  }

  private toDeadLetter(r: Record<string, unknown>): DeadLetterInfo {
    return {
      id: Number(r.id), projection: this.qualifiedName, position: Number(r.position), subject: r.subject as string, reason: r.reason as string,
      payload: r.payload as string, recordedAt: (r.recorded_at as Date).toISOString(), resolution: (r.resolution as DeadLetterInfo['resolution']) ?? null,
      resolvedAt: r.resolved_at ? (r.resolved_at as Date).toISOString() : null, resolvedBy: (r.resolved_by as string | null) ?? null,
    };
  }

  private async unresolvedLetter(id: number): Promise<Record<string, unknown>> {
    const [row] = await this.o.ds.query(`SELECT * FROM "${this.o.schema}".dead_letters WHERE id = $1 AND consumer = $2`, [id, this.name]);
    if (!row) throw new KeelError('not_found', `${this.qualifiedName} has no dead letter ${id}.`);
    if (row.resolution) throw new KeelError('conflict', `Dead letter ${id} of ${this.qualifiedName} was already ${row.resolution}.`);
    return row;
  }

  /**
   * Applies a dead-lettered event again (after a fix), in one transaction with its resolution. It is
   * applied where it stands now (the model has moved on since); an event that still fails stays a dead
   * letter and the answer says why.
   */
  async retryDeadLetter(id: number, actor: Actor): Promise<DeadLetterInfo> {
    const row = await this.unresolvedLetter(id);
    let events: EventEnvelope[];
    try {
      // One event, or the events of one decision (applied together, as they were delivered).
      events = eventsOf(JSON.parse(row.payload as string));
    } catch (error) {
      throw new KeelError('conflict', `Dead letter ${id} is not a valid event envelope (${(error as Error).message}); it can only be skipped.`);
    }
    const positioned = await this.opened(events.map((event) => ({ position: Number(row.position), event })));
    let result: unknown;
    let resolved: Record<string, unknown> | undefined;
    try {
      await this.o.ds.transaction(async (m) => {
        await scopeTransaction(m, ALL_TENANTS);
        const [locked] = await m.query(`SELECT resolution FROM "${this.o.schema}".dead_letters WHERE id = $1 FOR UPDATE`, [id]);
        if (locked.resolution) throw new KeelError('conflict', `Dead letter ${id} of ${this.qualifiedName} was already ${locked.resolution}.`);
        result = await this.o.projection.apply(m, positioned);
        [[resolved]] = await m.query(
          `UPDATE "${this.o.schema}".dead_letters SET resolution = 'retried', resolved_at = now(), resolved_by = $2 WHERE id = $1 RETURNING *`,
          [id, `${actor.kind}:${actor.id}`],
        );
      });
    } catch (error) {
      if (error instanceof KeelError) throw error;
      throw new KeelError('conflict', `Dead letter ${id} still does not apply: ${(error as Error).message}`);
    }
    await this.o.projection.afterCommit?.(result).catch((err) => this.o.logger.warn({ err }, 'afterCommit failed'));
    await this.refreshDeadLetters();
    return this.toDeadLetter(resolved!);
  }

  /**
   * Gives a dead letter up for good. The skip is an event first (`ops.dead_letter.skipped`, with the
   * operator as actor and a deterministic id, so asking twice records it once), then the letter is
   * marked skipped; a rebuild skips it too.
   */
  async skipDeadLetter(id: number, meta: { actor: Actor; correlationId: string }): Promise<DeadLetterInfo & { eventPosition: number }> {
    const row = await this.unresolvedLetter(id);
    const aggregateId = `${this.o.schema}-${this.name}-${id}`.replace(/[^A-Za-z0-9_-]/g, '_');
    const event: EventEnvelope = {
      id: nameBasedUuid(`keel.dead_letter.skipped/${this.o.messaging.stream}/${aggregateId}`),
      type: opsEventTypes.deadLetterSkipped,
      schemaVersion: 1,
      tenantId: PLATFORM_TENANT,
      aggregateType: 'dead_letter',
      aggregateId,
      aggregateVersion: 1,
      occurredAt: new Date().toISOString(),
      actor: meta.actor,
      correlationId: meta.correlationId,
      data: { projection: this.qualifiedName, position: Number(row.position), subject: row.subject, reason: storableText(String(row.reason), { multiline: true }) },
    };
    let eventPosition: number;
    try {
      [eventPosition] = (await this.store.append([event], 0)) as [number];
    } catch (error) {
      if (!(error instanceof ConcurrencyConflict)) throw error;
      // Recorded by an earlier attempt that did not get to mark the letter.
      const [earlier] = await this.store.readSubject(this.store.subjectOf(event));
      eventPosition = earlier!.position;
    }
    const [[resolved]] = await this.o.ds.query(
      `UPDATE "${this.o.schema}".dead_letters SET resolution = 'skipped', resolved_at = now(), resolved_by = $2 WHERE id = $1 AND resolution IS NULL RETURNING *`,
      [id, `${meta.actor.kind}:${meta.actor.id}`],
    );
    if (!resolved) throw new KeelError('conflict', `Dead letter ${id} of ${this.qualifiedName} was resolved meanwhile.`);
    await this.refreshDeadLetters();
    return { ...this.toDeadLetter(resolved), eventPosition };
  }

  /** Healthy: applying without an error and no unresolved dead letter (durable: a restart does not clear it). */
  health() {
    const c = this.consumer.health();
    return { ...c, deadLetters: this.unresolved, healthy: c.running && !c.lastError && this.unresolved === 0, checkpoint: this.checkpoint };
  }
}

/**
 * Readiness of a projection: the standby is ready; the active replica while it can apply (its consumer
 * has no standing error). Dead letters do not take a service out of rotation: they are reported here
 * (`healthy: false`), in `GET /api/v1/admin/projections` and as `keel_projection_dead_letters`, until an
 * operator retries or skips them.
 */
export const projectionCheck = (runner: ProjectionRunner) => ({
  name: 'projection',
  check: async () => {
    const h = runner.health();
    return { ok: !h.leader || (h.running && !h.lastError), detail: h };
  },
});
