import { createHash } from 'node:crypto';
import { asRawRecord, columnText, entryHash, indexedColumns, toLedgerRecord } from './ledger-entry';
import { GENESIS_HASH } from './hash-chain';

const sha = (prev: string, bytes: Uint8Array | string) => createHash('sha256').update(prev).update(bytes).digest('hex');

const enc = (s: string) => new TextEncoder().encode(s);
const envelope = {
  id: '0190F1C2-7A3B-7C4D-8E5F-0123456789AB',
  type: 'tenant.tenant.created',
  schemaVersion: 1,
  tenantId: 't1',
  aggregateType: 'tenant',
  aggregateId: 't1',
  aggregateVersion: 1,
  occurredAt: '2026-01-01T00:00:00.000Z',
  actor: { kind: 'user', id: 'u\u00001' },
  correlationId: 'c',
  data: { name: 'a\u0000b' },
};

describe('ledger records', () => {
  it('keeps a valid envelope as its published text and hashes exactly those bytes', () => {
    const text = JSON.stringify(envelope);
    const r = toLedgerRecord(7, enc(text));
    expect(r.problem).toBeNull();
    expect(r.json).toBe(text);
    expect(r.payload).toBeNull();
    expect(entryHash(GENESIS_HASH, r)).toBe(sha(GENESIS_HASH, text));
    // Other bytes for the same JSON value are another entry.
    expect(entryHash(GENESIS_HASH, toLedgerRecord(7, enc(JSON.stringify(envelope, null, 1))))).not.toBe(entryHash(GENESIS_HASH, r));
    expect(r.columns).toMatchObject({ eventId: envelope.id.toLowerCase(), context: 'tenant', actorId: 'u\uFFFD1', occurredAt: envelope.occurredAt });
  });

  it('flags JSON that is not an envelope, naming the fields, and indexes what it can', () => {
    const r = toLedgerRecord(1, enc(JSON.stringify({ ...envelope, aggregateVersion: 0, occurredAt: 'yesterday' })));
    expect(r.problem).toMatch(/aggregateVersion/);
    expect(r.problem).toMatch(/occurredAt/);
    expect(r.columns).toMatchObject({ tenantId: 't1', aggregateVersion: null, occurredAt: null });
  });

  it('keeps bytes that are not UTF-8 or not JSON, hashed as published', () => {
    const bad = toLedgerRecord(1, new Uint8Array([0xc3, 0x28]));
    expect(bad.problem).toMatch(/UTF-8/);
    expect(bad.payload).toEqual(Buffer.from([0xc3, 0x28]));
    expect(entryHash(GENESIS_HASH, bad)).toBe(sha(GENESIS_HASH, Buffer.from([0xc3, 0x28])));
    const notJson = toLedgerRecord(2, enc('{'));
    expect(notJson.problem).toMatch(/not JSON/);
    // JSON the database refuses is kept as bytes: its hash does not change with where it is kept.
    const json = toLedgerRecord(3, enc('[1]'));
    const raw = asRawRecord(json, 'too deep');
    expect(raw).toMatchObject({ json: null, payload: Buffer.from('[1]'), problem: expect.stringMatching(/too deep/) });
    expect(entryHash(GENESIS_HASH, raw)).toBe(entryHash(GENESIS_HASH, json));
  });

  it('derives text columns a Postgres text column can hold', () => {
    expect(columnText('a\u0000b\ud800c')).toBe('a\uFFFDb\uFFFDc');
    expect(columnText('\ud83d\ude00')).toBe('\ud83d\ude00');
    expect(columnText(42)).toBeNull();
    expect(indexedColumns([1, 2], false)).toMatchObject({ eventId: null, tenantId: null, type: null });
  });
});
