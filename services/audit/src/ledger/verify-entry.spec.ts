import { createHash } from 'node:crypto';
import { chainHash, GENESIS_HASH } from './hash-chain';
import { entryProblem, VerifyRow } from './verify-entry';

const sha = (...parts: (string | Uint8Array)[]) => parts.reduce((h, p) => h.update(p), createHash('sha256')).digest('hex');
const envelope = {
  id: '0190F1C2-7A3B-7C4D-8E5F-0123456789AB',
  type: 'tenant.tenant.created',
  schemaVersion: 1,
  tenantId: 't1',
  aggregateType: 'tenant',
  aggregateId: 't1',
  aggregateVersion: 3,
  occurredAt: '2026-01-01T00:00:00.123Z',
  actor: { kind: 'user', id: 'u1' },
  correlationId: 'c',
  data: { name: 'zürich \u0000 ✓' },
};
const text = JSON.stringify(envelope);
const prev = 'a'.repeat(64);
/** The row the writer stores for `text`, as verification reads it. */
const row = (over: Partial<Record<number, unknown>> = {}): VerifyRow => {
  const base: VerifyRow = [
    '7', envelope.id.toLowerCase(), 't1', 'tenant.tenant.created', 'tenant', 't1', 3, 'u1', String(Date.parse(envelope.occurredAt)),
    text, null, null, 'published', prev, sha(prev, text),
  ];
  for (const [i, v] of Object.entries(over)) (base as unknown[])[Number(i)] = v;
  return base;
};

describe('entryProblem (one entry checked against its stored prev_hash)', () => {
  it('passes an entry as the writer stores it', () => {
    expect(entryProblem(row())).toBeNull();
  });

  it('finds a changed envelope text by its hash, even one that is the same JSON value', () => {
    expect(entryProblem(row({ 9: text.replace('t1', 't2') }))).toMatch(/hash/);
    expect(entryProblem(row({ 9: JSON.stringify(envelope, null, 1) }))).toMatch(/hash/);
    expect(entryProblem(row({ 13: GENESIS_HASH }))).toMatch(/hash/);
  });

  it('finds every indexed column that disagrees with the envelope, occurred_at to the millisecond', () => {
    for (const [i, v] of [[1, null], [2, 't2'], [3, 'tenant.tenant.renamed'], [4, 'user'], [5, 't2'], [6, 4], [7, 'u2'], [8, String(Date.parse(envelope.occurredAt) + 1)], [8, null], [8, 'infinite']] as const) {
      expect(entryProblem(row({ [i]: v }))).toMatch(/indexed columns/);
    }
  });

  it('says so when the stored text is not JSON', () => {
    const broken = '{"not json';
    expect(entryProblem(row({ 9: broken, 14: sha(prev, broken) }))).toMatch(/not JSON/);
  });

  it('checks an entry kept as bytes against the bytes, with no indexed columns', () => {
    const bytes = Buffer.from([0xff, 0xfe, 0x00, 0x41]);
    const raw = { 1: null, 2: null, 3: null, 4: null, 5: null, 6: null, 7: null, 8: null, 9: null, 10: bytes, 11: 'the message is not UTF-8 text', 14: sha(prev, bytes) };
    expect(entryProblem(row(raw))).toBeNull();
    expect(entryProblem(row({ ...raw, 10: Buffer.from([0xff, 0xfe, 0x00, 0x42]) }))).toMatch(/hash/);
    expect(entryProblem(row({ ...raw, 2: 't1' }))).toMatch(/indexed columns/);
  });

  it('verifies entries chained before the published-bytes form by their canonical JSON', () => {
    expect(entryProblem(row({ 12: 'canonical', 14: chainHash(prev, envelope) }))).toBeNull();
    expect(entryProblem(row({ 12: 'canonical', 14: chainHash(prev, { ...envelope, tenantId: 't2' }) }))).toMatch(/hash/);
    const bytes = Buffer.from([0xff, 0x01]);
    const raw = { 1: null, 2: null, 3: null, 4: null, 5: null, 6: null, 7: null, 8: null, 9: null, 10: bytes, 11: 'x', 12: 'canonical' };
    expect(entryProblem(row({ ...raw, 14: sha(prev, Buffer.from([0]), bytes) }))).toBeNull();
    expect(entryProblem(row({ ...raw, 14: sha(prev, bytes) }))).toMatch(/hash/);
  });
});
