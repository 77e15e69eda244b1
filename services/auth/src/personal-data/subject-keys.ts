import { randomBytes } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import { SubjectRef } from '@keel/contracts';
import { open, seal } from '@keel/crypto';
import { FetchedKeys, SubjectKey, SubjectKeySource, subjectKeyContext, WrappedSubjectKey } from '@keel/messaging';
import { AUTH_SCHEMA } from '../database/schema';

const KEYS = `"${AUTH_SCHEMA}".subject_keys`;

interface KeyRow {
  tenant_id: string;
  subject_id: string;
  dek_sealed: Buffer | null;
}

const refKey = (tenantId: string, subjectId: string) => `${tenantId}\u0000${subjectId}`;

/** Distinct subjects in one order (every writer of `subject_keys` takes its rows in it). */
function sortedRefs(refs: SubjectRef[]): SubjectRef[] {
  return [...new Map(refs.map((r) => [refKey(r.tenantId, r.subjectId), r])).entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r);
}

/**
 * The owner's store of data keys (issue 7): each person's key sealed under the KEK in
 * `auth.subject_keys`. Sealing inside an open transaction makes its new keys in that transaction
 * (they commit, or roll back, with what they seal); otherwise each call is its own statement.
 */
export class SubjectKeyStore implements SubjectKeySource {
  constructor(
    /** A pool with the cross-tenant scope: keys of several tenants are read at once. */
    private readonly ds: DataSource,
    private readonly kek: Buffer,
  ) {}

  async keys(refs: SubjectRef[], create: boolean, tx?: unknown): Promise<FetchedKeys> {
    const rows = await this.rows(refs, create, tx as EntityManager | undefined);
    const keys: SubjectKey[] = rows.map((row, i) => {
      if (!row) return 'absent';
      if (!row.dek_sealed) return 'erased';
      return open(this.kek, row.dek_sealed, subjectKeyContext(refs[i]!));
    });
    // Inside the caller's transaction nothing is known committed (a key made by an earlier statement
    // of the same transaction reads like any other): none is cached. Outside one, each statement commits.
    return tx ? { keys, uncommitted: new Set(refs.map((_, i) => i)) } : { keys };
  }

  /** For another service (`cmd.auth.subject_keys`): the keys as stored, sealed under the KEK. */
  async wrapped(refs: SubjectRef[], create: boolean): Promise<WrappedSubjectKey[]> {
    return (await this.rows(refs, create)).map((row) => {
      if (!row) return { state: 'absent' };
      if (!row.dek_sealed) return { state: 'erased' };
      return { state: 'key', sealed: row.dek_sealed.toString('base64') };
    });
  }

  /**
   * Destroys subjects' keys, for good: each row stays as a tombstone (no key is made for it again).
   * In the caller's transaction (the rest of the erasure commits with it), in the order keys are
   * made in (`rows`), so an erasure and a seal of the same subjects cannot deadlock.
   */
  async erase(m: EntityManager, refs: SubjectRef[]): Promise<void> {
    for (const ref of sortedRefs(refs)) {
      await m.query(
        `INSERT INTO ${KEYS} AS k (tenant_id, subject_id, dek_sealed, erased_at) VALUES ($1, $2, NULL, now())
         ON CONFLICT (tenant_id, subject_id) DO UPDATE SET dek_sealed = NULL, erased_at = coalesce(k.erased_at, now())`,
        [ref.tenantId, ref.subjectId],
      );
    }
  }

  private async rows(refs: SubjectRef[], create: boolean, tx?: EntityManager): Promise<(KeyRow | undefined)[]> {
    const q = tx ?? this.ds;
    if (create) {
      // A key for each subject that has none (a concurrent maker's wins; an erased subject's tombstone
      // stays), in one order, so that two transactions making the same keys cannot deadlock.
      const sorted = sortedRefs(refs);
      await q.query(
        `INSERT INTO ${KEYS} (tenant_id, subject_id, dek_sealed)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT (tenant_id, subject_id) DO NOTHING`,
        [sorted.map((r) => r.tenantId), sorted.map((r) => r.subjectId), sorted.map((r) => seal(this.kek, randomBytes(32), subjectKeyContext(r)))],
      );
    }
    // In a transaction the rows are read under a share lock: an erasure (which updates them) waits for
    // it, or committed before and is seen, so nothing is sealed (nor done as the person) across it.
    const rows: KeyRow[] = await q.query(
      `SELECT k.tenant_id, k.subject_id, k.dek_sealed FROM ${KEYS} k
       JOIN unnest($1::text[], $2::text[]) AS r(tenant_id, subject_id) USING (tenant_id, subject_id)${tx ? ' ORDER BY k.tenant_id, k.subject_id FOR SHARE OF k' : ''}`,
      [refs.map((r) => r.tenantId), refs.map((r) => r.subjectId)],
    );
    const byRef = new Map(rows.map((r) => [refKey(r.tenant_id, r.subject_id), r]));
    return refs.map((r) => byRef.get(refKey(r.tenantId, r.subjectId)));
  }
}
