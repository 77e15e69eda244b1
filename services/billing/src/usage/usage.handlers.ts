import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { z } from 'zod';
import {
  Attribution,
  billingEventTypes as B,
  billingRpc,
  CommandMeta,
  EventEnvelope,
  KeelError,
  nameBasedUuid,
  newEventId,
  parseOrThrow,
  PLATFORM_PRICES,
  Quantities,
  RATING_AGGREGATE,
  ReportDimension,
  USAGE_AGGREGATE,
  USAGE_MAX_AGE_DAYS,
  USAGE_MAX_AHEAD_MINUTES,
  usageAnswerSchema,
  UsageRecordInput,
  UsageReport,
  usageRecordViewSchema,
} from '@keel/contracts';
import { KeelConfig } from '@keel/config';
import { ALL_TENANTS, inTenant } from '@keel/database';
import { EventStore, InjectConfig, MessagePattern } from '@keel/messaging';
import { CatalogueCache } from '../catalogue-cache';
import { ProjectionRunner } from '@keel/projections';
import { bucketCondition, reportRange, timeZoneOf } from './periods';
import { D, PriceRow, unratedReason } from './rating';
import { DIMENSIONS, QUANTITIES } from './usage.projection';

type Answer = z.infer<typeof usageAnswerSchema>;
/** A record of any kind, its fields optional (the schema has checked which each kind needs). */
export type Flat = { id: string; kind: UsageRecordInput['kind']; target?: string; occurredAt?: string; model?: string; gpuType?: string; attribution?: Attribution; quantities?: Quantities };
type Result = Answer['results'][number];

const DAY = 86_400_000;
/** Report dimension → rollup column. */
const COLUMN: Record<ReportDimension, string> = {
  model: 'model', user: 'user_id', team: 'team_id', project: 'project_id', costCenter: 'cost_center', environment: 'environment', apiKey: 'api_key_id',
};

/**
 * For a caller that is an API key: the attribution with the key's id as `apiKeyId` (added when
 * absent), or `other` when it names another key. Undefined for any other caller.
 */
export function ownKey(meta: CommandMeta, attribution: Attribution | undefined): Attribution | 'other' | undefined {
  if (meta.actor.kind !== 'api_key') return undefined;
  if (attribution?.apiKeyId !== undefined && attribution.apiKeyId !== meta.actor.id) return 'other';
  return { ...attribution, apiKeyId: meta.actor.id };
}

/** The id of a usage fact's event (and its `Nats-Msg-Id`): the same for every retry of the same record. */
export const usageFactId = (tenantId: string, source: string, id: string) => nameBasedUuid(`keel.billing.usage\n${tenantId}\n${source}\n${id}`);

/**
 * Usage in: each record checked (its time within 35 days back and 5 minutes ahead, a price that
 * covers what it uses), then the accepted ones appended as facts (the fact path: pipelined,
 * `Nats-Msg-Id` = a name-based id of tenant, source and record id). Counting each exactly once is
 * the usage projection's (`usage_facts`); this only spares the log what it already counted.
 */
@Injectable()
export class UsageHandlers {
  constructor(
    private readonly store: EventStore,
    @Inject(DataSource) private readonly ds: DataSource,
    private readonly runner: ProjectionRunner,
    @InjectConfig() private readonly config: KeelConfig,
    private readonly cache: CatalogueCache,
  ) {}

  @MessagePattern('cmd.billing.record_usage')
  async record(body: unknown): Promise<Answer> {
    const { meta, payload } = parseOrThrow(billingRpc.recordUsage.request, body, 'usage batch');
    return this.ingest(payload.tenantId, payload.data.source, payload.data.records as Flat[], meta);
  }

  /** Checks and appends a batch of records (a settled reservation's record too, marked as such). */
  async ingest(tenant: string, source: string, sent: Flat[], meta: CommandMeta, viaReservation = false): Promise<Answer> {
    // As Postgres prints a uuid (the projection's keys compare it so).
    const tenantId = tenant.toLowerCase();
    const now = Date.now();
    const results: Result[] = sent.map((r, index) => ({ index, id: r.id, status: 'accepted' }));
    const refuse = (i: number, reason: string) => Object.assign(results[i]!, { status: 'refused', reason });
    // An API key reports its own usage: its id is the records' apiKeyId (an API-key budget cannot be dodged by naming another).
    const records = sent.map((r, i) => {
      const own = ownKey(meta, r.attribution);
      if (own === 'other') refuse(i, `attribution.apiKeyId names another API key than the one reporting (${meta.actor.id})`);
      return r.kind === 'cancel' || own === 'other' || own === undefined ? r : { ...r, attribution: own };
    });

    // Within the batch: the first of an id counts, the rest are duplicates.
    const seen = new Set<string>();
    records.forEach((r, i) => {
      if (seen.has(r.id)) Object.assign(results[i]!, { status: 'duplicate' });
      seen.add(r.id);
    });
    const { counted, corrections, targets, aliases, prices } = await this.lookups(tenantId, source, records);
    records.forEach((r, i) => {
      if (results[i]!.status !== 'accepted') return;
      if (counted.has(r.id)) return void Object.assign(results[i]!, { status: 'duplicate' });
      if (r.kind === 'record') {
        const at = Date.parse(r.occurredAt!);
        if (at < now - USAGE_MAX_AGE_DAYS * DAY) return void refuse(i, `occurredAt ${r.occurredAt} is more than ${USAGE_MAX_AGE_DAYS} days ago`);
        if (at > now + USAGE_MAX_AHEAD_MINUTES * 60_000) return void refuse(i, `occurredAt ${r.occurredAt} is more than ${USAGE_MAX_AHEAD_MINUTES} minutes ahead`);
      }
      if (r.kind !== 'record') {
        // A correction corrects a record: not itself, nor another correction (it would wait for ever).
        if (r.target === r.id) return void refuse(i, `${r.kind} ${r.id} names itself as its target`);
        if (corrections.has(r.target!) || records.some((o) => o.id === r.target && o.kind !== 'record')) {
          return void refuse(i, `${r.target} is a correction, not a record: ${r.kind} the record it corrected`);
        }
      }
      if (r.kind === 'cancel') return;
      const model = aliases.get(r.model!) ?? r.model!;
      // An amend is rated at its record's time: that record's, in this batch or counted before; else the amend's own, else now.
      const targetTime = r.kind === 'amend' ? (records.find((o, j) => j < i && o.id === r.target && o.kind === 'record')?.occurredAt ?? targets.get(r.target!)) : undefined;
      const at = Date.parse(targetTime ?? r.occurredAt ?? new Date(now).toISOString());
      const reason = unratedReason(prices, tenantId, model, at, r.quantities ?? {}, r.gpuType);
      if (reason) refuse(i, reason);
    });

    const facts: { i: number; fact: EventEnvelope }[] = [];
    records.forEach((r, i) => {
      if (results[i]!.status === 'accepted') facts.push({ i, fact: this.fact(tenantId, source, r, aliases.get(r.model ?? '') ?? r.model, meta, viaReservation) });
    });
    if (facts.length) {
      const positions = await this.store.appendFacts(facts.map((f) => f.fact));
      facts.forEach((f, j) => (results[f.i]!.position = positions[j]));
    }
    const count = (s: Result['status']) => results.filter((r) => r.status === s).length;
    return { accepted: count('accepted'), duplicates: count('duplicate'), refused: count('refused'), results };
  }

  /** What the checks need, in three round trips: ids already counted, corrected records' times, aliases and prices. */
  private async lookups(tenantId: string, source: string, records: Flat[]) {
    return inTenant(this.ds, tenantId, async (m) => {
      const ids = records.map((r) => r.id);
      const counted = new Set<string>(
        (await m.query(`SELECT fact_id FROM usage_facts WHERE tenant_id = $1 AND source = $2 AND fact_id = ANY($3)`, [tenantId, source, ids])).map((r: { fact_id: string }) => r.fact_id),
      );
      const named = records.filter((r) => r.kind !== 'record').map((r) => r.target!);
      const corrections = new Set<string>(
        named.length
          ? (await m.query(`SELECT fact_id FROM usage_facts WHERE tenant_id = $1 AND source = $2 AND fact_id = ANY($3) AND kind <> 'record'`, [tenantId, source, named])).map((r: { fact_id: string }) => r.fact_id)
          : [],
      );
      const targetIds = records.filter((r) => r.kind === 'amend').map((r) => r.target!);
      const targets = new Map<string, string>(
        targetIds.length
          ? (await m.query(`SELECT record_id, occurred_at FROM usage_records WHERE tenant_id = $1 AND source = $2 AND record_id = ANY($3)`, [tenantId, source, targetIds])).map(
              (r: { record_id: string; occurred_at: Date }) => [r.record_id, r.occurred_at.toISOString()],
            )
          : [],
      );
      return { counted, corrections, targets };
    }).then(async (found) => ({ ...found, ...(await this.catalogue(tenantId, records)) }));
  }

  /**
   * The aliases and prices the records' models need: the tenant's and the platform's (read across
   * scopes: the platform list is no tenant's). Each model's are kept in the process while the
   * tenant's and the platform's generations are unchanged (see CatalogueCache).
   */
  async catalogue(tenantId: string, records: Flat[]) {
    const named = [...new Set(records.map((r) => r.model).filter((x): x is string => !!x))];
    const gens = await this.cache.generations([tenantId, PLATFORM_PRICES]);
    const found = new Map<string, { model: string; prices: PriceRow[] }>();
    const load = (models: string[]) => this.readCatalogue(tenantId, models);
    // The models not kept are read in one go; each is kept on its own (one that lapsed meanwhile is read by itself).
    const missing = named.filter((n) => !this.cache.has(`catalogue:${tenantId}:${n}`, gens));
    const loaded = missing.length ? await load(missing) : new Map<string, { model: string; prices: PriceRow[] }>();
    for (const n of named) {
      found.set(n, await this.cache.get(`catalogue:${tenantId}:${n}`, gens, async () => loaded.get(n) ?? (await load([n])).get(n)!));
    }
    const aliases = new Map<string, string>();
    const prices: PriceRow[] = [];
    const seen = new Set<string>();
    for (const [n, v] of found) {
      if (v.model !== n) aliases.set(n, v.model);
      for (const p of v.prices) {
        const k = `${p.scope}\n${p.model}\n${p.version}`;
        if (!seen.has(k)) (seen.add(k), prices.push(p));
      }
    }
    return { aliases, prices };
  }

  private async readCatalogue(tenantId: string, named: string[]): Promise<Map<string, { model: string; prices: PriceRow[] }>> {
    return inTenant(this.ds, ALL_TENANTS, async (m) => {
      const aliases = new Map<string, string>();
      // The tenant's aliases win over the platform's.
      for (const r of (await m.query(`SELECT scope, alias, model FROM model_aliases WHERE scope = ANY($1) AND alias = ANY($2) ORDER BY scope = 'platform' DESC`, [[tenantId, PLATFORM_PRICES], named])) as {
        alias: string;
        model: string;
      }[]) {
        aliases.set(r.alias, r.model);
      }
      const models = [...new Set(named.map((n) => aliases.get(n) ?? n))];
      const prices: PriceRow[] = models.length
        ? await m.query(`SELECT scope, model, version, rates, effective_from, effective_to FROM prices WHERE model = ANY($1) AND scope = ANY($2)`, [models, [tenantId, PLATFORM_PRICES]])
        : [];
      return new Map(named.map((n) => {
        const model = aliases.get(n) ?? n;
        return [n, { model, prices: prices.filter((p) => p.model === model) }];
      }));
    });
  }

  private fact(tenantId: string, source: string, r: Flat, model: string | undefined, meta: CommandMeta, viaReservation: boolean): EventEnvelope {
    const id = usageFactId(tenantId, source, r.id);
    return {
      id,
      type: B.usageRecorded,
      schemaVersion: 1,
      tenantId,
      aggregateType: USAGE_AGGREGATE,
      aggregateId: id,
      aggregateVersion: 1,
      occurredAt: new Date().toISOString(),
      actor: meta.actor,
      correlationId: meta.correlationId,
      data: {
        source,
        recordId: r.id,
        kind: r.kind,
        ...(r.target !== undefined ? { target: r.target } : {}),
        ...(r.occurredAt !== undefined ? { occurredAt: new Date(r.occurredAt).toISOString() } : {}),
        ...(model !== undefined ? { model, modelAsSent: r.model } : {}),
        ...(r.gpuType !== undefined ? { gpuType: r.gpuType } : {}),
        attribution: r.attribution ?? {},
        ...(r.quantities ? { quantities: r.quantities as Record<string, string> } : {}),
        ...(viaReservation ? { viaReservation: true } : {}),
      },
    };
  }

  @MessagePattern('cmd.billing.rerate')
  async rerate(body: unknown): Promise<{ position: number }> {
    const { meta, payload } = parseOrThrow(billingRpc.rerate.request, body, 're-rating');
    const id = meta.commandId ? nameBasedUuid(`keel.billing.rerate\n${payload.tenantId}\n${meta.commandId}`) : newEventId();
    const [position] = await this.store.appendFacts([
      {
        id,
        type: B.usageRerated,
        schemaVersion: 1,
        tenantId: payload.tenantId,
        aggregateType: RATING_AGGREGATE,
        aggregateId: id,
        aggregateVersion: 1,
        occurredAt: new Date().toISOString(),
        actor: meta.actor,
        correlationId: meta.correlationId,
        data: { from: new Date(payload.data.from).toISOString(), to: new Date(payload.data.to).toISOString(), reason: payload.data.reason },
      },
    ]);
    return { position: position! };
  }

  @MessagePattern('qry.billing.usage_report')
  async report(body: unknown): Promise<UsageReport> {
    const q = parseOrThrow(billingRpc.usageReport.request, body, 'usage report');
    const zone = timeZoneOf(q.timeZone);
    const { from, to } = reportRange(q, zone);
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const groupBy = q.groupBy ?? [];
    const params: unknown[] = [q.tenantId];
    const buckets = bucketCondition(from, to, params);
    const cols = groupBy.map((d) => COLUMN[d]);
    const sums = `${[...QUANTITIES.map(([c]) => c), 'cost'].map((c) => `sum(${c})::text AS ${c}`).join(', ')}, sum(records)::int AS records, sum(unpriced)::int AS unpriced`;
    const rows: Record<string, string | number>[] = await inTenant(this.ds, q.tenantId, (m) =>
      m.query(
        `SELECT ${cols.length ? `${cols.join(', ')}, ` : ''}${sums} FROM usage_rollups
          WHERE tenant_id = $1 AND ${buckets}
          ${cols.length ? `GROUP BY ${cols.join(', ')} HAVING sum(records) <> 0 OR sum(cost) <> 0 ORDER BY ${cols.join(', ')}` : ''}`,
        params,
      ),
    );
    const exact = (v: string | number | undefined) => new D(v ?? 0).toFixed();
    const measures = (r: Record<string, string | number> | undefined) => ({
      inputTokens: exact(r?.input_tokens),
      cachedInputTokens: exact(r?.cached_input_tokens),
      outputTokens: exact(r?.output_tokens),
      requests: exact(r?.requests),
      gpuSeconds: exact(r?.gpu_seconds),
      cost: exact(r?.cost),
      records: Number(r?.records ?? 0),
      unpricedRecords: Number(r?.unpriced ?? 0),
    });
    const out = cols.length ? rows.map((r) => ({ key: Object.fromEntries(groupBy.map((d) => [d, r[COLUMN[d]] === '' ? null : String(r[COLUMN[d]])])), ...measures(r) })) : [];
    // The total is the sum of the rows, added exactly (numeric); without groupBy it is the one sum.
    const total = cols.length ? sumRows(out) : measures(rows[0]);
    return { tenantId: q.tenantId, from: new Date(from).toISOString(), to: new Date(to).toISOString(), timeZone: zone, groupBy, currency: 'USD', rows: out, total };
  }

  @MessagePattern('qry.billing.usage_record')
  async getRecord(body: unknown): Promise<z.infer<typeof usageRecordViewSchema>> {
    const q = parseOrThrow(billingRpc.usageRecord.request, body, 'usage record');
    if (q.consistentWith !== undefined) await this.runner.waitFor(q.consistentWith, this.config.KEEL_CONSISTENCY_WAIT_MS);
    const [r] = await inTenant(this.ds, q.tenantId, (m) =>
      m.query(`SELECT * FROM usage_records WHERE tenant_id = $1 AND source = $2 AND record_id = $3`, [q.tenantId, q.source, q.recordId]),
    );
    if (!r) throw new KeelError('not_found', `No usage record "${q.recordId}" from source "${q.source}" is counted in this tenant.`);
    return {
      tenantId: r.tenant_id,
      source: r.source,
      id: r.record_id,
      status: r.status,
      occurredAt: (r.occurred_at as Date).toISOString(),
      model: r.model,
      gpuType: r.gpu_type,
      attribution: Object.fromEntries(DIMENSIONS.slice(1).filter(([c]) => r[c] !== '').map(([c, a]) => [a, r[c]])),
      quantities: Object.fromEntries(QUANTITIES.map(([c, q]) => [q, new D(r[c]).toFixed()])),
      cost: new D(r.cost).toFixed(),
      priced: r.price_version !== null,
      price: r.price_version === null ? null : { scope: r.price_scope, model: r.price_model, version: r.price_version },
      corrections: r.corrections,
      position: Number(r.position),
    };
  }
}

/** Adds report rows' measures exactly. */
function sumRows(rows: { inputTokens: string; cachedInputTokens: string; outputTokens: string; requests: string; gpuSeconds: string; cost: string; records: number; unpricedRecords: number }[]) {
  const add = (values: string[]) => values.reduce((s, v) => s.plus(v), new D(0)).toFixed();
  return {
    inputTokens: add(rows.map((r) => r.inputTokens)),
    cachedInputTokens: add(rows.map((r) => r.cachedInputTokens)),
    outputTokens: add(rows.map((r) => r.outputTokens)),
    requests: add(rows.map((r) => r.requests)),
    gpuSeconds: add(rows.map((r) => r.gpuSeconds)),
    cost: add(rows.map((r) => r.cost)),
    records: rows.reduce((s, r) => s + r.records, 0),
    unpricedRecords: rows.reduce((s, r) => s + r.unpricedRecords, 0),
  };
}
