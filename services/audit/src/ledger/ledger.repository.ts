import { createHash } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import { AuditEventsQuery, contextOf, EventEnvelope, LedgerEntry, Page, ReplayPage, VerifyResult } from '@keel/contracts';
import { AUDIT_SCHEMA } from '../database/schema';
import { ALL_TENANTS, inTenant, PooledClient, scopeTransaction, withPooledClient } from '@keel/database';
import { RawJson } from '@keel/messaging';
import { PublicJwk, verifyCheckpoint } from '../signing/signing-keys';
import { chainHash, GENESIS_HASH } from './hash-chain';
import { asRawRecord, entryHash, LedgerRecord } from './ledger-entry';
import { entryProblem, HASH, PREV_HASH, SEQ, VerifyRow, VERIFY_COLUMNS } from './verify-entry';

const LEDGER = `"${AUDIT_SCHEMA}".ledger`;
const CHECKPOINTS = `"${AUDIT_SCHEMA}".checkpoints`;
const KEYS = `"${AUDIT_SCHEMA}".signing_keys`;
/** The transaction lock every append (and checkpoint signature) takes: one chain, one writer at a time. */
export const APPEND_LOCK = 'keel.ledger.append';

export interface Checkpoint {
  seq: number;
  hash: string;
  signedAt: string;
  keyId: string;
  signature: string;
}
/** The ledger's columns as one insert writes them, each with the type of its column array. */
const COLUMNS = [
  ['seq', 'int8'], ['event_id', 'uuid'], ['tenant_id', 'text'], ['type', 'text'], ['context', 'text'], ['aggregate_type', 'text'],
  ['aggregate_id', 'text'], ['aggregate_version', 'int4'], ['actor_kind', 'text'], ['actor_id', 'text'], ['occurred_at', 'timestamptz'],
  ['envelope', 'json'], ['payload', 'bytea'], ['problem', 'text'], ['hashed', 'text'], ['prev_hash', 'bpchar'], ['hash', 'bpchar'],
  ['user_id', 'text'],
] as const;
/**
 * One statement for any number of rows: a parameter per column (an array of the rows' values), so
 * the statement text and the parameter count stay the same whatever the batch holds.
 */
const INSERT_SQL = `INSERT INTO ${LEDGER} (${COLUMNS.map(([c]) => c).join(', ')})
  SELECT * FROM unnest(${COLUMNS.map(([, t], i) => `$${i + 1}::${t}[]`).join(', ')})`;

/** What the ledger's statements need of a connection: an EntityManager, or a pooled pg client's rows. */
export interface Sql {
  query(sql: string, params?: unknown[]): Promise<any>;
}

/** Records chained onto a tail, ready to insert: each entry's hash, and the rows as column arrays. */
export interface PreparedAppend {
  tail: Tail;
  records: LedgerRecord[];
  written: Tail[];
  columns: unknown[][];
}

/** A value Postgres refuses (SQLSTATE class 22, data exception; 54, a limit such as nesting depth). */
export function isDataError(error: unknown): boolean {
  const code = String((error as { code?: string })?.code ?? '');
  return code.startsWith('22') || code.startsWith('54');
}

let savepoints = 0;

/** The most envelope bytes one replay page carries, well inside a NATS reply. */
const REPLAY_PAGE_BYTES = 896 * 1024;

export interface Tail {
  seq: number;
  hash: string;
}

interface LedgerRow {
  seq: string;
  event_id: string | null;
  tenant_id: string | null;
  type: string | null;
  context: string | null;
  aggregate_type: string | null;
  aggregate_id: string | null;
  aggregate_version: number | null;
  actor_kind: string | null;
  actor_id: string | null;
  occurred_at: Date | null;
  recorded_at: Date;
  envelope: EventEnvelope | null;
  payload: Buffer | null;
  problem: string | null;
  hashed: 'canonical' | 'published';
  prev_hash: string;
  hash: string;
}

function toEntry(row: LedgerRow): LedgerEntry {
  const base = { seq: Number(row.seq), hash: row.hash, prevHash: row.prev_hash, recordedAt: row.recorded_at.toISOString() };
  if (row.problem === null) {
    // A decision of several events is one entry: `event` is its first, `events` all of them.
    const envelope = row.envelope as EventEnvelope | EventEnvelope[];
    return Array.isArray(envelope) ? { ...base, event: envelope[0]!, events: envelope } : { ...base, event: envelope };
  }
  return {
    ...base,
    event: row.payload === null ? row.envelope : null,
    problem: row.problem,
    ...(row.payload !== null ? { payload: row.payload.toString('base64') } : {}),
  };
}

export class LedgerRepository {
  constructor(private readonly ds: DataSource) {}

  async tail(manager?: Sql): Promise<Tail> {
    if (!manager) return inTenant(this.ds, ALL_TENANTS, (m) => this.tail(m));
    const rows = await manager.query(`SELECT seq, hash FROM ${LEDGER} ORDER BY seq DESC LIMIT 1`);
    return rows.length ? { seq: Number(rows[0].seq), hash: rows[0].hash } : { seq: 0, hash: GENESIS_HASH };
  }

  /**
   * Opens the append transaction on a pooled pg client in one round trip: the transaction, its
   * cross-tenant scope, the append lock, and the tail read under that lock (each statement of a
   * simple query takes its own snapshot, so the tail read sees every append committed before the
   * lock was granted). Returns that tail; the caller commits or rolls back.
   */
  async beginAppend(client: { query(text: string): Promise<unknown> }): Promise<Tail> {
    const results = (await client.query(
      `BEGIN; SELECT set_config('keel.tenant_id', '${ALL_TENANTS}', true); SELECT pg_advisory_xact_lock(hashtext('${APPEND_LOCK}'));
       SELECT seq, hash FROM ${LEDGER} ORDER BY seq DESC LIMIT 1`,
    )) as { rows: { seq: string; hash: string }[] }[];
    const rows = results[results.length - 1]!.rows;
    return rows.length ? { seq: Number(rows[0]!.seq), hash: rows[0]!.hash } : { seq: 0, hash: GENESIS_HASH };
  }

  /**
   * Chains and inserts records that directly follow `tail`, in one statement, inside a savepoint.
   * Returns each new entry's sequence and hash. The caller guarantees contiguity (positions
   * tail.seq+1, +2, …). A record Postgres refuses (a data exception) is kept as raw bytes and
   * flagged instead: nothing a message holds can stop the append.
   */
  async append(manager: Sql, tail: Tail, records: LedgerRecord[]): Promise<Tail[]> {
    if (!records.length) return [];
    const savepoint = `ledger_append_${++savepoints}`;
    await manager.query(`SAVEPOINT ${savepoint}`);
    try {
      const written = await this.insert(manager, tail, records);
      await manager.query(`RELEASE SAVEPOINT ${savepoint}`);
      return written;
    } catch (error) {
      if (!isDataError(error)) throw error;
      await manager.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
    }
    // One of them is refused: insert one by one, each refused one as bytes.
    const written: Tail[] = [];
    let prev = tail;
    for (const record of records) {
      await manager.query(`SAVEPOINT ${savepoint}`);
      try {
        [prev] = (await this.insert(manager, prev, [record])) as [Tail];
        await manager.query(`RELEASE SAVEPOINT ${savepoint}`);
      } catch (error) {
        if (!isDataError(error)) throw error;
        await manager.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
        await manager.query(`SAVEPOINT ${savepoint}`);
        try {
          [prev] = (await this.insert(manager, prev, [asRawRecord(record, (error as Error).message)])) as [Tail];
          await manager.query(`RELEASE SAVEPOINT ${savepoint}`);
        } catch (again) {
          if (!isDataError(again)) throw again;
          // Still refused: nothing of the message but its bytes (a bytea takes any).
          await manager.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
          [prev] = (await this.insert(manager, prev, [asRawRecord(record)])) as [Tail];
        }
      }
      written.push(prev);
    }
    return written;
  }

  /**
   * Chains records that directly follow `tail` (positions tail.seq+1, +2, …): each entry's hash and
   * the column arrays of one insert. No I/O, so a batch can be prepared while the one before commits.
   */
  prepare(tail: Tail, records: LedgerRecord[]): PreparedAppend {
    let prev = tail.hash;
    let expected = tail.seq + 1;
    const n = records.length;
    const columns = COLUMNS.map(() => new Array<unknown>(n));
    const [seq, eventId, tenantId, type, context, aggregateType, aggregateId, aggregateVersion, actorKind, actorId, occurredAt, json, payload, problem, hashed, prevHash, hashes, userId] = columns;
    const written: Tail[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const record = records[i]!;
      if (record.position !== expected) throw new Error(`ledger would not be contiguous: got ${record.position}, expected ${expected}`);
      const hash = entryHash(prev, record);
      const c = record.columns;
      seq![i] = record.position;
      eventId![i] = c.eventId;
      tenantId![i] = c.tenantId;
      type![i] = c.type;
      context![i] = c.context;
      aggregateType![i] = c.aggregateType;
      aggregateId![i] = c.aggregateId;
      aggregateVersion![i] = c.aggregateVersion;
      actorKind![i] = c.actorKind;
      actorId![i] = c.actorId;
      occurredAt![i] = c.occurredAt;
      userId![i] = c.userId;
      json![i] = record.json;
      payload![i] = record.payload;
      problem![i] = record.problem;
      hashed![i] = 'published';
      prevHash![i] = prev;
      hashes![i] = hash;
      written[i] = { seq: record.position, hash };
      prev = hash;
      expected++;
    }
    return { tail, records, written, columns };
  }

  /** Inserts a prepared batch in one statement (a refused value fails it whole: see `append` for the careful path). */
  async insertPrepared(sql: Sql, prepared: PreparedAppend): Promise<Tail[]> {
    if (!prepared.records.length) return [];
    await sql.query(INSERT_SQL, prepared.columns);
    return prepared.written;
  }

  private insert(sql: Sql, tail: Tail, records: LedgerRecord[]): Promise<Tail[]> {
    return this.insertPrepared(sql, this.prepare(tail, records));
  }

  /** Entries that are not valid envelopes (incidents), oldest first. */
  async incidents(afterSeq: number, limit: number): Promise<Page<LedgerEntry>> {
    const rows: LedgerRow[] = await inTenant(this.ds, ALL_TENANTS, (m) =>
      m.query(`SELECT * FROM ${LEDGER} WHERE problem IS NOT NULL AND seq > $1 ORDER BY seq LIMIT $2`, [afterSeq, limit + 1]),
    );
    const items = rows.slice(0, limit).map(toEntry);
    return { items, nextCursor: rows.length > limit ? String(items[items.length - 1]!.seq) : null };
  }

  async incidentCount(): Promise<number> {
    const [row] = await inTenant(this.ds, ALL_TENANTS, (m) => m.query(`SELECT count(*)::int AS n FROM ${LEDGER} WHERE problem IS NOT NULL`));
    return row.n;
  }

  async lastCheckpointSeq(manager: Sql = this.ds.manager): Promise<number> {
    const rows = await manager.query(`SELECT seq FROM ${CHECKPOINTS} ORDER BY seq DESC LIMIT 1`);
    return rows.length ? Number(rows[0].seq) : 0;
  }

  async insertCheckpoint(manager: Sql, c: Checkpoint): Promise<void> {
    await manager.query(`INSERT INTO ${CHECKPOINTS} (seq, hash, signed_at, key_id, signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING`, [
      c.seq, c.hash, c.signedAt, c.keyId, c.signature,
    ]);
  }

  async checkpoints(afterSeq: number, limit: number): Promise<Page<Checkpoint>> {
    const rows = await this.ds.query(
      `SELECT seq, hash, signed_at, key_id, signature FROM ${CHECKPOINTS} WHERE seq > $1 ORDER BY seq LIMIT $2`,
      [afterSeq, limit + 1],
    );
    const items: Checkpoint[] = rows.slice(0, limit).map((r: { seq: string; hash: string; signed_at: Date; key_id: string; signature: string }) => ({
      seq: Number(r.seq), hash: r.hash, signedAt: r.signed_at.toISOString(), keyId: r.key_id, signature: r.signature,
    }));
    return { items, nextCursor: rows.length > limit ? String(items[items.length - 1]!.seq) : null };
  }

  async search(q: AuditEventsQuery): Promise<Page<LedgerEntry>> {
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (sql: string, value: unknown) => {
      params.push(value);
      where.push(sql.replace('?', `$${params.length}`));
    };
    const desc = q.order !== 'asc';
    if (q.tenantId) add('tenant_id = ?', q.tenantId);
    if (q.type) add('type = ?', q.type);
    if (q.aggregateType) add('aggregate_type = ?', q.aggregateType);
    if (q.aggregateId) add('aggregate_id = ?', q.aggregateId);
    if (q.actorId) add('actor_id = ?', q.actorId);
    if (q.from) add('occurred_at >= ?', q.from);
    if (q.to) add('occurred_at < ?', q.to);
    if (q.cursor) add(desc ? 'seq < ?' : 'seq > ?', Number(q.cursor));
    params.push(q.limit + 1);
    const rows: LedgerRow[] = await inTenant(this.ds, q.tenantId ?? ALL_TENANTS, (m) =>
      m.query(
        `SELECT * FROM ${LEDGER} ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
         ORDER BY seq ${desc ? 'DESC' : 'ASC'} LIMIT $${params.length}`,
        params,
      ),
    );
    const more = rows.length > q.limit;
    const items = rows.slice(0, q.limit).map(toEntry);
    return { items, nextCursor: more ? String(items[items.length - 1]!.seq) : null };
  }

  /**
   * Entries a person is actor or subject of, oldest first: acting, the aggregate, or the user a body
   * names (`data.userId`: a grant, a session started); and the same of their sessions and of the API
   * keys they made (found in the ledger: the sessions it started for them, the keys they created).
   * Every arm is an index (`actor_id`, `(aggregate_type, aggregate_id)`, `user_id`). Cut by size like
   * a replay page (one NATS reply). `related`: the person and those sessions and keys.
   */
  async subjectEntries(q: { tenantId: string; subjectId: string; afterSeq: number; limit: number }): Promise<{ page: Page<LedgerEntry>; related: string[] }> {
    return inTenant(this.ds, ALL_TENANTS, async (m) => {
      const related: string[] = [
        q.subjectId,
        ...(
          (await m.query(
            `SELECT aggregate_id AS id FROM ${LEDGER} WHERE user_id = $2 AND tenant_id = $1 AND type = 'auth.session.started'
             UNION SELECT aggregate_id FROM ${LEDGER} WHERE actor_id = $2 AND type = 'auth.api_key.created'`,
            [q.tenantId, q.subjectId],
          )) as { id: string }[]
        ).map((r) => r.id),
      ];
      const rows: (LedgerRow & { size: number })[] = await m.query(
        `SELECT l.*, octet_length(l.envelope::text) AS size FROM ${LEDGER} l
         WHERE l.problem IS NULL AND l.seq IN (
           SELECT seq FROM ${LEDGER} WHERE actor_id = ANY($2::text[]) AND seq > $3
           UNION SELECT seq FROM ${LEDGER} WHERE aggregate_type IN ('user', 'mfa_factor', 'session', 'api_key') AND aggregate_id = ANY($2::text[]) AND seq > $3
           UNION SELECT seq FROM ${LEDGER} WHERE user_id = $1 AND seq > $3)
         ORDER BY l.seq LIMIT $4`,
        [q.subjectId, related, q.afterSeq, q.limit + 1],
      );
      let bytes = 0;
      let take = 0;
      while (take < Math.min(rows.length, q.limit) && (take === 0 || bytes + rows[take]!.size <= REPLAY_PAGE_BYTES)) bytes += rows[take++]!.size;
      const items = rows.slice(0, take).map(toEntry);
      return { page: { items, nextCursor: rows.length > take ? String(items[items.length - 1]!.seq) : null }, related };
    });
  }

  /**
   * A page of the ledger for a projection's replay, as JSON text: each envelope goes out as Postgres
   * prints it, framed with its position, without being parsed here and encoded again (a decision's
   * array of envelopes is split into its events, each with the decision's position).
   */
  async replay(afterSeq: number, limit: number, contexts?: string[]): Promise<RawJson<ReplayPage>> {
    return this.ds.transaction('REPEATABLE READ', async (m) => {
      await scopeTransaction(m, ALL_TENANTS);
      // In seq order from an index, never a sort of everything after `afterSeq` for each page (see verify).
      await m.query('SET LOCAL enable_sort = off');
      const head = (await this.tail(m)).seq;
      const params: unknown[] = [afterSeq, head, limit];
      let filter = '';
      if (contexts?.length === 1) {
        // One context: its (context, seq) index is already in order.
        params.push(contexts[0]);
        filter = 'AND context = $4';
      } else if (contexts?.length) {
        params.push(contexts);
        filter = 'AND context = ANY($4)';
      }
      const rows: { seq: string; envelope: string }[] = await m.query(
        // Incidents are not envelopes: no projection can apply them (live, they are dead-lettered).
        `SELECT seq, envelope::text AS envelope FROM ${LEDGER}
         WHERE seq > $1 AND seq <= $2 AND problem IS NULL ${filter} ORDER BY seq LIMIT $3`,
        params,
      );
      // A page must fit in one NATS reply (max_payload, 1 MiB by default): cut it by size too.
      const parts: string[] = [];
      let bytes = 0;
      for (const r of rows) {
        // The column keeps the text as published (json, not jsonb): whitespace may come before a decision's '['.
        const framed = r.envelope.trimStart().startsWith('[')
          ? (JSON.parse(r.envelope) as unknown[]).map((e) => `{"position":${r.seq},"event":${JSON.stringify(e)}}`).join(',')
          : `{"position":${r.seq},"event":${r.envelope}}`;
        const size = Buffer.byteLength(framed) + 1;
        if (parts.length && bytes + size > REPLAY_PAGE_BYTES) break;
        bytes += size;
        parts.push(framed);
      }
      const scannedTo = rows.length < limit && parts.length === rows.length ? Math.max(head, afterSeq) : Number(rows[parts.length - 1]!.seq);
      return new RawJson<ReplayPage>(`{"events":[${parts.join(',')}],"scannedTo":${scannedTo},"headSeq":${head}}`);
    });
  }

  /**
   * Recomputes the chain over [fromSeq, toSeq] and names the first entry that is not what
   * the chain says: a gap, a wrong prev_hash link, a hash that does not match its envelope,
   * or a column that disagrees with the envelope it was derived from.
   */
  async verify(fromSeq = 1, toSeq?: number): Promise<VerifyResult> {
    // A pooled connection of its own: the pages come as arrays of columns (no object per row).
    return withPooledClient(this.ds, async (client) => {
      const sql: Sql = { query: async (text, params) => (await client.query(text, params)).rows };
      // Without sorts: under row-level security the planner takes the policy's filter for very
      // selective, and reads every entry after a page's start into a sort for each page (quadratic
      // in the ledger's length); the primary key's index gives the order and stops at the page.
      await client.query(`BEGIN; SELECT set_config('keel.tenant_id', '${ALL_TENANTS}', true); SET LOCAL enable_sort = off`);
      const result = await this.verifyIn(client, sql, fromSeq, toSeq);
      await client.query('COMMIT');
      return result;
    });
  }

  private async verifyIn(client: PooledClient, db: Sql, fromSeq: number, toSeq?: number): Promise<VerifyResult> {
    let prev = GENESIS_HASH;
    if (fromSeq > 1) {
      const before = await db.query(`SELECT hash FROM ${LEDGER} WHERE seq = $1`, [fromSeq - 1]);
      if (!before.length) {
        return { ok: false, checked: 0, lastSeq: null, firstInvalidSeq: fromSeq - 1, problem: `entry ${fromSeq - 1} is missing` };
      }
      prev = before[0].hash;
    }
    let expected = fromSeq;
    let checked = 0;
    let lastSeq: number | null = null;
    const fail = (seq: number, problem: string): VerifyResult => ({ ok: false, checked, lastSeq, firstInvalidSeq: seq, problem });
    // Signed checkpoints in range: they catch a chain that was rewritten consistently.
    const signed = new Map<number, Checkpoint & { jwk: PublicJwk }>();
    const cps = await db.query(
      `SELECT c.seq, c.hash, c.signed_at, c.key_id, c.signature, k.public_key_jwk FROM ${CHECKPOINTS} c JOIN ${KEYS} k USING (key_id)
       WHERE c.seq >= $1 ${toSeq ? 'AND c.seq <= $2' : ''} ORDER BY c.seq`,
      toSeq ? [fromSeq, toSeq] : [fromSeq],
    );
    for (const c of cps) {
      signed.set(Number(c.seq), { seq: Number(c.seq), hash: c.hash, signedAt: c.signed_at.toISOString(), keyId: c.key_id, signature: c.signature, jwk: c.public_key_jwk });
    }
    let lastGoodCheckpoint = fromSeq - 1;
    // The next page is asked for as soon as a page arrives, so the database reads it while this
    // process checks the one in hand (the connection queues it: one statement at a time).
    const PAGE = 5_000;
    const page = (from: number): Promise<VerifyRow[]> => {
      const p = client
        .query({
          text: `SELECT ${VERIFY_COLUMNS} FROM ${LEDGER} WHERE seq >= $1 ${toSeq ? 'AND seq <= $3' : ''} ORDER BY seq LIMIT $2`,
          values: toSeq ? [from, PAGE, toSeq] : [from, PAGE],
          rowMode: 'array',
        })
        .then((r) => r.rows as VerifyRow[]);
      p.catch(() => undefined); // a page no longer wanted after a failure must not go unhandled
      return p;
    };
    let pending = page(expected);
    for (;;) {
      const rows = await pending;
      if (!rows.length) break;
      pending = rows.length < PAGE ? Promise.resolve([]) : page(Number(rows[rows.length - 1]![SEQ]) + 1);
      for (const row of rows) {
        const seq = Number(row[SEQ]);
        if (seq !== expected) return fail(expected, `entry ${expected} is missing (next present is ${seq})`);
        if (row[PREV_HASH] !== prev) return fail(seq, 'prev_hash does not link to the previous entry');
        const problem = entryProblem(row);
        if (problem !== null) return fail(seq, problem);
        const hash = row[HASH];
        const cp = signed.get(seq);
        if (cp) {
          if (!verifyCheckpoint(cp.jwk, cp)) return fail(seq, `the signature of checkpoint ${seq} does not verify`);
          if (cp.hash !== hash) {
            return fail(
              seq,
              `entry ${seq} differs from its signed checkpoint: the chain was rewritten somewhere in ${lastGoodCheckpoint + 1}..${seq}`,
            );
          }
          lastGoodCheckpoint = seq;
        }
        prev = hash;
        expected++;
        checked++;
        lastSeq = seq;
      }
    }
    // A signed checkpoint beyond the last entry proves entries were there that are gone now.
    const beyond = [...signed.keys()].filter((seq) => seq > (lastSeq ?? fromSeq - 1));
    if (beyond.length) {
      const missing = (lastSeq ?? fromSeq - 1) + 1;
      return fail(missing, `entry ${missing} is missing, yet checkpoint ${Math.max(...beyond)} was signed over it`);
    }
    if (toSeq !== undefined && lastSeq !== null && lastSeq < toSeq) {
      const head = await this.tail(db);
      if (head.seq > lastSeq) return fail(lastSeq + 1, `entry ${lastSeq + 1} is missing`);
    }
    const [incidents] = await db.query(
      `SELECT count(*)::int AS n FROM ${LEDGER} WHERE problem IS NOT NULL AND seq >= $1 ${toSeq ? 'AND seq <= $2' : ''}`,
      toSeq ? [fromSeq, toSeq] : [fromSeq],
    );
    return { ok: true, checked, lastSeq, incidents: incidents.n };
  }
}
