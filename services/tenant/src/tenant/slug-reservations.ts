import { DataSource } from 'typeorm';

interface Waiting {
  slug: string;
  tenantId: string;
  resolve: (reserved: boolean) => void;
  reject: (error: unknown) => void;
}

/** The most reservations one INSERT carries. */
const MAX_BATCH = 500;

/**
 * Slug reservations with group commit: while one INSERT is in flight, the reservations asked for
 * meanwhile wait and go together in the next, one statement and one commit for all of them (at
 * most MAX_BATCH), so concurrent creates share a WAL flush instead of paying one each. Each
 * reservation is answered on its own: true when its row was inserted, false when the slug was
 * already held (by anyone, including an earlier reservation of the same batch). When the INSERT
 * fails, nothing of it was written, and each of its reservations is tried again on its own.
 */
export class SlugReservations {
  private readonly waiting: Waiting[] = [];
  private flushing = false;

  constructor(
    private readonly ds: DataSource,
    private readonly table: string,
  ) {}

  reserve(slug: string, tenantId: string): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.waiting.push({ slug, tenantId, resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  /**
   * One INSERT for the batch; answers each reservation. In slug order, so that two replicas' batches
   * take the unique index's entries in the same order and cannot deadlock; ON CONFLICT DO NOTHING
   * also settles two rows of one statement for the same slug (the one asked for first wins).
   */
  private async insert(batch: Waiting[]): Promise<void> {
    const rows: { slug: string; tenant_id: string }[] = await this.ds.query(
      `INSERT INTO ${this.table} (slug, tenant_id)
       SELECT slug, tenant_id FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS r(slug, tenant_id, n) ORDER BY slug, n
       ON CONFLICT (slug) DO NOTHING RETURNING slug, tenant_id::text AS tenant_id`,
      [batch.map((w) => w.slug), batch.map((w) => w.tenantId)],
    );
    const inserted = new Set(rows.map((r) => `${r.slug}\u0000${r.tenant_id}`));
    for (const w of batch) w.resolve(inserted.delete(`${w.slug}\u0000${w.tenantId.toLowerCase()}`));
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.waiting.length) {
        const batch = this.waiting.splice(0, MAX_BATCH);
        try {
          await this.insert(batch);
        } catch (error) {
          if (batch.length === 1) batch[0]!.reject(error);
          // One bad reservation must not fail the others: each goes again on its own.
          else for (const w of batch) await this.insert([w]).catch((e: unknown) => w.reject(e));
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
