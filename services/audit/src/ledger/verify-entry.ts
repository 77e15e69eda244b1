import { createHash } from 'node:crypto';
import { chainHash } from './hash-chain';
import { indexedColumns } from './ledger-entry';

/**
 * The columns verification reads, in this order (rows come as arrays): the envelope as its stored
 * text (exactly as published, not parsed by the driver), and `occurred_at` as whole milliseconds
 * since the epoch (what a JavaScript Date of it holds; `infinite` for ±infinity, which no Date holds).
 */
export const VERIFY_COLUMNS = `seq, event_id, tenant_id, type, aggregate_type, aggregate_id, aggregate_version, actor_id,
  CASE WHEN occurred_at IS NULL THEN NULL WHEN isfinite(occurred_at) THEN floor(extract(epoch FROM occurred_at) * 1000)::int8::text ELSE 'infinite' END,
  envelope::text, payload, problem, hashed, prev_hash, hash`;

/** A stored row as verification reads it (VERIFY_COLUMNS, positionally). */
export type VerifyRow = [
  seq: string,
  eventId: string | null,
  tenantId: string | null,
  type: string | null,
  aggregateType: string | null,
  aggregateId: string | null,
  aggregateVersion: number | null,
  actorId: string | null,
  occurredMs: string | null,
  envelopeText: string | null,
  payload: Buffer | null,
  problem: string | null,
  hashed: 'canonical' | 'published',
  prevHash: string,
  hash: string,
];

export const SEQ = 0;
export const PREV_HASH = 13;
export const HASH = 14;

const NUL = Buffer.from([0]);

/**
 * What is wrong with one entry's content, or null: its envelope is not JSON, its hash is not the
 * chain link of its content after its stored prev_hash, or an indexed column disagrees with the
 * envelope. Whether that prev_hash links to the entry before is the caller's check: given it, each
 * entry is checked on its own.
 */
export function entryProblem(row: VerifyRow): string | null {
  const [, eventId, tenantId, type, aggregateType, aggregateId, aggregateVersion, actorId, occurredMs, text, payload, problem, hashed, prev, hash] = row;
  let parsed: unknown = null;
  if (payload === null) {
    try {
      parsed = JSON.parse(text ?? 'null');
    } catch {
      return 'the stored envelope is not JSON';
    }
  }
  let expected: string;
  if (hashed === 'canonical') {
    // Appended before the published-bytes form: the canonical JSON, raw bytes after a NUL byte.
    expected = payload !== null ? createHash('sha256').update(prev).update(NUL).update(payload).digest('hex') : chainHash(prev, parsed);
  } else {
    // SHA-256(prev ‖ the published bytes): the bytes kept, or the stored text's UTF-8 (which is those bytes).
    const h = createHash('sha256').update(prev);
    expected = (payload !== null ? h.update(payload) : h.update(text ?? '', 'utf8')).digest('hex');
  }
  if (expected !== hash) return 'hash does not match the entry content';
  const c = indexedColumns(parsed, problem === null);
  if (
    tenantId !== c.tenantId || type !== c.type || aggregateType !== c.aggregateType ||
    aggregateId !== c.aggregateId || actorId !== c.actorId || aggregateVersion !== c.aggregateVersion ||
    (occurredMs === null ? null : Number(occurredMs)) !== (c.occurredAt === null ? null : new Date(c.occurredAt).getTime()) ||
    (eventId ?? null) !== c.eventId
  ) {
    return 'indexed columns disagree with the hashed envelope';
  }
  return null;
}
