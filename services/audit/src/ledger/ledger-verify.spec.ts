import { createHash } from 'node:crypto';
import { DataSource } from 'typeorm';
import { GENESIS_HASH } from './hash-chain';
import { LedgerRepository } from './ledger.repository';
import { VerifyRow } from './verify-entry';

/** A ledger of `n` valid entries as verification reads them, chained from genesis. */
function ledger(n: number): VerifyRow[] {
  const rows: VerifyRow[] = [];
  let prev = GENESIS_HASH;
  for (let seq = 1; seq <= n; seq++) {
    const occurredAt = new Date(Date.UTC(2026, 0, 1) + seq).toISOString();
    const text = JSON.stringify({ id: null, type: 'bench.usage.recorded', tenantId: `t${seq % 7}`, aggregateType: 'usage', aggregateId: `u${seq}`, aggregateVersion: 1, occurredAt, actor: { kind: 'service', id: 'x' } });
    const hash = createHash('sha256').update(prev).update(text).digest('hex');
    rows.push([String(seq), null, `t${seq % 7}`, 'bench.usage.recorded', 'usage', `u${seq}`, 1, 'x', String(Date.parse(occurredAt)), text, null, null, 'published', prev, hash]);
    prev = hash;
  }
  return rows;
}

/** The repository over an in-memory ledger: the statements verification sends, answered from `rows`. */
function repositoryOver(rows: VerifyRow[]): LedgerRepository {
  const client = {
    async query(q: string | { text: string; values: unknown[]; rowMode: 'array' }, params?: unknown[]) {
      if (typeof q !== 'string') {
        const [from, limit, to] = q.values as [number, number, number | undefined];
        return { rows: rows.filter((r) => Number(r[0]) >= from && (to === undefined || Number(r[0]) <= to)).slice(0, limit) };
      }
      if (/checkpoints/.test(q)) return { rows: [] };
      if (/count\(\*\)/.test(q)) return { rows: [{ n: 0 }] };
      if (/ORDER BY seq DESC LIMIT 1/.test(q)) return { rows: rows.length ? [{ seq: rows[rows.length - 1]![0], hash: rows[rows.length - 1]![14] }] : [] };
      if (/WHERE seq = \$1/.test(q)) return { rows: rows.filter((r) => Number(r[0]) === params![0]).map((r) => ({ hash: r[14] })) };
      return { rows: [] };
    },
  };
  const lent = { ...client, on: () => undefined, removeListener: () => undefined };
  const ds = { driver: { obtainMasterConnection: async () => [lent, () => undefined] } } as unknown as DataSource;
  return new LedgerRepository(ds);
}

describe('ledger verification over many pages', () => {
  const N = 12_000; // pages of 5,000: the last is partial

  it('checks every entry of every page', async () => {
    expect(await repositoryOver(ledger(N)).verify()).toEqual({ ok: true, checked: N, lastSeq: N, incidents: 0 });
    expect(await repositoryOver(ledger(N)).verify(4_990, 10_010)).toEqual({ ok: true, checked: 5_021, lastSeq: 10_010, incidents: 0 });
  });

  it('names the first broken entry whichever check finds it and whatever comes after it', async () => {
    // Content changed at 3,000 (page 1); a link broken at 6,000 and a gap at 9,000 (later pages).
    const rows = ledger(N);
    rows[2_999]![2] = 'someone-else';
    rows[5_999]![13] = GENESIS_HASH;
    const gapped = rows.filter((r) => r[0] !== '9000');
    expect(await repositoryOver(gapped).verify()).toMatchObject({ ok: false, firstInvalidSeq: 3_000, checked: 2_999, lastSeq: 2_999, problem: expect.stringMatching(/indexed columns/) });
    expect(await repositoryOver(gapped).verify(3_001)).toMatchObject({ ok: false, firstInvalidSeq: 6_000, checked: 2_999, lastSeq: 5_999, problem: expect.stringMatching(/prev_hash/) });
    expect(await repositoryOver(gapped).verify(6_001)).toMatchObject({ ok: false, firstInvalidSeq: 9_000, checked: 2_999, lastSeq: 8_999, problem: expect.stringMatching(/missing/) });
  });

  it('puts an entry’s link before its content, and a content failure before a later link failure in the same page', async () => {
    const rows = ledger(N);
    rows[6_999]![9] = rows[6_999]![9]!.replace('u7000', 'u7001'); // content of 7,000
    rows[7_099]![13] = GENESIS_HASH; // link of 7,100
    expect(await repositoryOver(rows).verify()).toMatchObject({ firstInvalidSeq: 7_000, problem: expect.stringMatching(/hash does not match/) });
    rows[6_999]![13] = GENESIS_HASH; // and the link of 7,000 itself
    expect(await repositoryOver(rows).verify()).toMatchObject({ firstInvalidSeq: 7_000, problem: expect.stringMatching(/prev_hash/) });
  });
});
