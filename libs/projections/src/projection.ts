import { EntityManager } from 'typeorm';
import { PositionedEvent } from '@keel/contracts';
import { projectionBookkeepingUpgradeSql } from './shadow';

/** A read model fed by events. `apply` runs inside the transaction that also moves the checkpoint. */
export interface Projection {
  /** Unique within the service's schema, e.g. `tenants`. */
  name: string;
  /** Contexts whose events it reads (`evt.*.<context>.>`), also the ledger replay filter. */
  contexts: string[];
  /**
   * With one context: the only aggregate type it reads (`evt.*.<context>.<aggregateType>.*`), so the
   * events of that context's other aggregates (sessions, API keys…) are not delivered to it at all.
   */
  aggregateType?: string;
  /**
   * Tables it owns. Its SQL names them unqualified (the service role's search_path is its schema),
   * so a rebuild can fill the copies in the shadow schema (`projectionShadowSql`) beside them.
   */
  tables: string[];
  /**
   * Applies events in order, inside the transaction that also moves the checkpoint. What it
   * returns is handed to `afterCommit` once that transaction has committed.
   */
  apply(manager: EntityManager, events: PositionedEvent[]): Promise<unknown>;
  /** Runs after the commit (e.g. refresh a cache); must not fail the batch. */
  afterCommit?(applied: unknown): Promise<void>;
  /** Runs after a rebuild committed (e.g. drop what a cache holds of the rows the swap changed). */
  afterRebuild?(changes: RebuildChanges): Promise<void>;
}

/** Rows listed per table at most; a swap that changed more says 'all'. */
export const MAX_LISTED_CHANGES = 10_000;

/**
 * What a rebuild's swap changed, per table: the live rows it removed (as they were) and the rows it
 * put in (as they are), or 'all' when every row was replaced or more than MAX_LISTED_CHANGES of
 * either kind changed. A rebuild that agrees with the live model changes nothing.
 */
export type RebuildChanges = Record<string, { removed: Record<string, unknown>[]; added: Record<string, unknown>[] } | 'all'>;

/** SQL for the bookkeeping tables every service with projections creates in its schema. */
export function projectionTablesSql(schema: string): string[] {
  return [
    `CREATE TABLE IF NOT EXISTS "${schema}".projection_checkpoints (
      name text PRIMARY KEY,
      position bigint NOT NULL DEFAULT 0,
      updated_at timestamptz NOT NULL DEFAULT now()
    )`,
    `CREATE TABLE IF NOT EXISTS "${schema}".dead_letters (
      id bigserial PRIMARY KEY,
      consumer text NOT NULL,
      position bigint NOT NULL,
      subject text NOT NULL,
      payload text NOT NULL,
      reason text NOT NULL,
      recorded_at timestamptz NOT NULL DEFAULT now()
    )`,
    ...projectionBookkeepingUpgradeSql(schema),
  ];
}
