import { Client } from 'pg';
import { eventually, httpClient } from '@keel/testing';

export interface Acknowledged {
  id: string;
  slug: string;
  position: number;
}

/**
 * After a restart under a load of creates: every acknowledged tenant is in the read model and in
 * the ledger exactly once (no id or slug twice, nothing that was not attempted), the ledger is
 * contiguous from 1 with each event once, and it verifies. Answers the ledger's last sequence.
 */
export async function expectCreatesLandedOnce(
  http: ReturnType<typeof httpClient>,
  db: Client,
  acknowledged: Acknowledged[],
  attempted: Set<string>,
): Promise<number> {
  // The read model, read in pages, asked again after a consistency_timeout while it catches up.
  const last = Math.max(...acknowledged.map((a) => a.position));
  const readAll = async () => {
    const items: { id: string; slug: string }[] = [];
    let cursor: string | null = null;
    do {
      const res: { status: number; body: { items: { id: string; slug: string }[]; nextCursor: string | null } } = await http(
        'GET',
        `/api/v1/tenants?limit=500&consistentWith=${last}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      );
      if (res.status !== 200) return { status: res.status, items };
      items.push(...res.body.items);
      cursor = res.body.nextCursor;
    } while (cursor);
    return { status: 200, items };
  };
  const read = await eventually(readAll, (r) => r.status === 200, { timeoutMs: 60_000, intervalMs: 200, what: `the read model at position ${last}` });
  expect(read.status).toBe(200);
  const readIds = read.items.map((t) => t.id);
  const readSlugs = read.items.map((t) => t.slug);
  expect(readIds.filter((id, i) => readIds.indexOf(id) !== i)).toEqual([]);
  expect(readSlugs.filter((slug, i) => readSlugs.indexOf(slug) !== i)).toEqual([]);
  expect(acknowledged.filter((a) => !readIds.includes(a.id))).toEqual([]);
  expect(readSlugs.filter((slug) => !attempted.has(slug))).toEqual([]);

  // The ledger catches up after the restart: wait until it holds the last acknowledged position.
  await eventually(
    async () => (await db.query('SELECT coalesce(max(seq), 0)::int AS last FROM audit.ledger')).rows[0].last as number,
    (max) => max >= last,
    { timeoutMs: 60_000, intervalMs: 100, what: `the ledger to reach position ${last}` },
  );
  // Contiguous from 1, each event once, and each tenant created once (no slug twice).
  const { rows } = await db.query(
    `SELECT count(*)::int AS n, count(DISTINCT seq)::int AS seqs, count(DISTINCT event_id)::int AS ids,
            count(DISTINCT (aggregate_type, aggregate_id, aggregate_version))::int AS versions, min(seq)::int AS first, max(seq)::int AS last
       FROM audit.ledger`,
  );
  const max = rows[0].last as number;
  expect(max).toBeGreaterThanOrEqual(last);
  expect(rows[0]).toEqual({ n: max, seqs: max, ids: max, versions: max, first: 1, last: max });
  const { rows: created } = await db.query(
    `SELECT aggregate_id AS id, envelope->'data'->>'slug' AS slug FROM audit.ledger WHERE type = 'tenant.tenant.created' AND seq <= $1`,
    [max],
  );
  const ledgerIds = created.map((r) => r.id as string);
  const ledgerSlugs = created.map((r) => r.slug as string);
  expect(ledgerSlugs.filter((slug, i) => ledgerSlugs.indexOf(slug) !== i)).toEqual([]);
  expect(acknowledged.filter((a) => !ledgerIds.includes(a.id))).toEqual([]);
  for (const a of acknowledged) expect({ id: a.id, slug: ledgerSlugs[ledgerIds.indexOf(a.id)] }).toEqual({ id: a.id, slug: a.slug });

  const verify = await http('GET', `/api/v1/audit/verify?toSeq=${max}`);
  expect(verify.body).toEqual({ ok: true, checked: max, lastSeq: max, incidents: 0 });
  return max;
}
