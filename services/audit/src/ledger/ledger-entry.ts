import { createHash } from 'node:crypto';
import { contextOf, envelopeSchema, isEnvelope } from '@keel/contracts';

/**
 * What the ledger makes of one stream message. The ledger holds whatever was published: a valid
 * envelope is an ordinary entry; anything else (not UTF-8, not JSON, not an envelope, or a value
 * Postgres refuses) is still appended, hashed and chained, and flagged as an incident with its
 * `problem`, so no content of a message can stop the trail or leave a gap in it.
 */
export interface LedgerRecord {
  position: number;
  /** The published JSON text, stored verbatim (`json`, not `jsonb`: `\u0000` and lone surrogates are kept). */
  json: string | null;
  /** That text parsed (for the indexed columns). */
  parsed: unknown;
  /** The published bytes, kept only when they are not JSON text at all (the hash then covers them). */
  payload: Buffer | null;
  /** Set when the message is not a valid envelope: why. */
  problem: string | null;
  columns: IndexedColumns;
  /** The message as published (not stored unless it is the payload). */
  data: Uint8Array;
}

/** Columns derived from the envelope for queries; null where the message does not have a usable value. */
export interface IndexedColumns {
  eventId: string | null;
  tenantId: string | null;
  type: string | null;
  context: string | null;
  aggregateType: string | null;
  aggregateId: string | null;
  aggregateVersion: number | null;
  actorKind: string | null;
  actorId: string | null;
  occurredAt: string | null;
  /** The user the body names (`data.userId`), for a person's export. */
  userId: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// ignoreBOM: a leading U+FEFF stays in the text (so JSON.parse refuses it and the bytes are kept as
// they are): the stored text must re-encode to exactly the bytes that were hashed.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A problem description a text column can hold whatever the message held: the parser's and zod's
 * messages quote the input (a key name with NUL, say), so NUL, lone surrogates and other control
 * characters are replaced.
 */
export function problemText(s: string): string {
  // eslint-disable-next-line no-control-regex
  return (columnText(s, 2_000) ?? '').replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/g, '\uFFFD');
}

/** A text column cannot hold NUL; lone surrogates become U+FFFD when encoded anyway. */
const UNSAFE_FOR_TEXT = /[\u0000\uD800-\uDFFF]/;

export function columnText(value: unknown, max = 1_000): string | null {
  if (typeof value !== 'string') return null;
  const cut = value.length > max ? value.slice(0, max) : value;
  if (!UNSAFE_FOR_TEXT.test(cut)) return cut;
  return cut.replace(/\u0000/g, '\uFFFD').replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

function record(value: unknown): Record<string, unknown> | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
}

/** The indexed columns of a (possibly invalid) envelope, derived the same way at append and at verification. */
export function indexedColumns(value: unknown, valid: boolean): IndexedColumns {
  // A decision of several events is indexed by its first (they share the aggregate).
  const e = record(Array.isArray(value) ? value[0] : value) ?? {};
  const actor = record(e.actor) ?? {};
  const type = columnText(e.type, 200);
  const version = e.aggregateVersion;
  const occurredAt = valid && typeof e.occurredAt === 'string' ? e.occurredAt : null;
  return {
    eventId: typeof e.id === 'string' && UUID.test(e.id) ? e.id.toLowerCase() : null,
    tenantId: columnText(e.tenantId, 200),
    type,
    context: type && type.includes('.') ? contextOf(type) : null,
    aggregateType: columnText(e.aggregateType, 200),
    aggregateId: columnText(e.aggregateId, 200),
    aggregateVersion: typeof version === 'number' && Number.isInteger(version) && version > 0 && version <= 2_147_483_647 ? version : null,
    actorKind: columnText(actor.kind, 64),
    actorId: columnText(actor.id, 500),
    occurredAt,
    userId: columnText(record(e.data)?.userId, 200),
  };
}

/** Why a parsed message is not an envelope, or a decision's non-empty array of envelopes of one aggregate; null if it is. */
function envelopeProblem(parsed: unknown): string | null {
  const items = Array.isArray(parsed) ? parsed : [parsed];
  if (!items.length) return 'not a valid event envelope: an empty decision';
  for (const [index, item] of items.entries()) {
    if (isEnvelope(item)) continue;
    const result = envelopeSchema.safeParse(item);
    if (!result.success) {
      const where = Array.isArray(parsed) ? `event ${index}: ` : '';
      return `not a valid event envelope: ${where}${result.error.issues.map((i) => `${i.path.join('.') || '(message)'}: ${i.message}`).join('; ')}`.slice(0, 2_000);
    }
  }
  const first = items[0] as { tenantId: string; aggregateType: string; aggregateId: string };
  if (items.some((i) => (i as typeof first).aggregateId !== first.aggregateId || (i as typeof first).aggregateType !== first.aggregateType || (i as typeof first).tenantId !== first.tenantId)) {
    return 'not a valid event envelope: the events of one decision belong to several aggregates';
  }
  return null;
}

/** Classifies a published message; never throws. */
export function toLedgerRecord(position: number, data: Uint8Array): LedgerRecord {
  const bytes = (): Buffer => Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    return { position, json: null, parsed: undefined, payload: bytes(), problem: 'the message is not UTF-8 text', columns: indexedColumns(null, false), data };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { position, json: null, parsed: undefined, payload: bytes(), problem: problemText(`the message is not JSON: ${(error as Error).message}`), columns: indexedColumns(null, false), data };
  }
  const found = envelopeProblem(parsed);
  const problem = found === null ? null : problemText(found);
  return { position, json: text, parsed, payload: null, problem, columns: indexedColumns(parsed, problem === null), data };
}

/**
 * The same message, held as its bytes only: for JSON Postgres itself refuses (too deeply nested,
 * say), with why; with no reason, the last resort, whose fixed problem text holds nothing of the
 * message (a bytea takes any bytes).
 */
export function asRawRecord(r: LedgerRecord, reason?: string): LedgerRecord {
  return {
    position: r.position,
    data: r.data,
    json: null,
    parsed: undefined,
    payload: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength),
    problem:
      reason === undefined
        ? 'the ledger could not hold this message other than as bytes'
        : problemText(`${r.problem ? `${r.problem}; ` : ''}the ledger could not hold it as JSON: ${reason}`),
    columns: indexedColumns(null, false),
  };
}

/**
 * The chain link of an entry appended now: SHA-256(prev_hash ‖ the message's bytes exactly as
 * published), whether they are kept as JSON text or as bytes. (Entries appended before this form
 * existed hash the canonical JSON instead: `hashed = 'canonical'`, see the repository's verification.)
 */
export function entryHash(prev: string, record: Pick<LedgerRecord, 'data'>): string {
  return publishedHash(prev, record.data);
}

export function publishedHash(prev: string, bytes: Uint8Array): string {
  return createHash('sha256').update(prev).update(bytes).digest('hex');
}
