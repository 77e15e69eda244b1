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
 * already held (by anyone, including an earlier reservation of the same batch). A failed INSERT
 * fails every reservation it carried; nothing of it was written.
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

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.waiting.length) {
        const batch = this.waiting.splice(0, MAX_BATCH);
        try {
          // ON CONFLICT DO NOTHING also settles two rows of one statement for the same slug: the first wins.
          const rows: { slug: string; tenant_id: string }[] = await this.ds.query(
            `INSERT INTO ${this.table} (slug, tenant_id)
             SELECT slug, tenant_id FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS r(slug, tenant_id, n) ORDER BY n
             ON CONFLICT (slug) DO NOTHING RETURNING slug, tenant_id::text AS tenant_id`,
            [batch.map((w) => w.slug), batch.map((w) => w.tenantId)],
          );
          const inserted = new Set(rows.map((r) => `${r.slug}\u0000${r.tenant_id}`));
          for (const w of batch) w.resolve(inserted.delete(`${w.slug}\u0000${w.tenantId.toLowerCase()}`));
        } catch (error) {
          for (const w of batch) w.reject(error);
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
