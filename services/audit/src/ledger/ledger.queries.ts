import { Injectable } from '@nestjs/common';
import {
  actorSubject, auditRpc, EventEnvelope, fieldSubject, KeelError, personalFieldsOf, LedgerEntry, Page, parseOrThrow, ProjectionStatus, ReplayPage, VerifyResult,
} from '@keel/contracts';
import { MessagePattern, PersonalData, RawJson } from '@keel/messaging';
import { LedgerWriter } from './ledger-writer';
import { PublicJwk, SigningKeys } from '../signing/signing-keys';
import { Checkpoint, LedgerRepository } from './ledger.repository';

/** What a person's export shows in place of someone else's personal data in a body. */
const REDACTED = '[redacted]';

/**
 * An envelope as a person's export shows it: another person's personal data left out (the actor's
 * address and user agent when the actor is not them, a body field about someone else, such as the
 * email of a user they created, as "[redacted]").
 */
function onlyTheirs(e: EventEnvelope, theirs: ReadonlySet<string>, actorIsTheirs: boolean): EventEnvelope {
  let out = e;
  if (!actorIsTheirs) {
    const { ip: _ip, userAgent: _ua, personal: _p, ...actor } = e.actor;
    out = { ...out, actor };
  }
  const fields = personalFieldsOf(e.type);
  if (fields.length) {
    const data = JSON.parse(JSON.stringify(e.data)) as Record<string, unknown>;
    let changed = false;
    for (const f of fields) {
      const ref = fieldSubject(e, f);
      if (ref && theirs.has(ref.subjectId)) continue;
      let holder: unknown = data;
      for (const key of f.path.slice(0, -1)) holder = holder && typeof holder === 'object' ? (holder as Record<string, unknown>)[key] : undefined;
      const field = f.path[f.path.length - 1]!;
      if (holder && typeof holder === 'object' && typeof (holder as Record<string, unknown>)[field] === 'string') {
        (holder as Record<string, unknown>)[field] = REDACTED;
        changed = true;
      }
    }
    if (changed) out = { ...out, data };
  }
  return out;
}

@Injectable()
export class LedgerQueries {
  constructor(
    private readonly repo: LedgerRepository,
    private readonly signingKeys: SigningKeys,
    private readonly writer: LedgerWriter,
    private readonly personalData: PersonalData,
  ) {}

  /**
   * Entries as whoever may read the trail sees them: personal values opened (the actor's address and
   * user agent included), `"[erased]"` where their subject was erased. The ledger itself keeps the
   * ciphertext its hashes cover; incidents are shown as they were stored.
   */
  private async opened(page: Page<LedgerEntry>, actorsOf?: ReadonlySet<string>): Promise<Page<LedgerEntry>> {
    type Envelopes = { events?: EventEnvelope[]; event: EventEnvelope };
    const entries = page.items.filter((e) => !e.problem) as (LedgerEntry & Envelopes)[];
    const all = entries.flatMap((e) => e.events ?? [e.event]);
    let opened: EventEnvelope[];
    if (!actorsOf) opened = await this.personalData.open(all, { actor: true });
    else {
      // A person's export: their own personal data (their keys' and sessions' acting too), never another person's.
      const theirs = (e: EventEnvelope) => actorsOf.has(actorSubject(e).subjectId);
      const bodies = await this.personalData.open(all.map((e) => onlyTheirs(e, actorsOf, theirs(e))));
      const actors = await this.personalData.open(bodies.filter(theirs), { actor: true });
      let j = 0;
      opened = bodies.map((e) => (theirs(e) ? actors[j++]! : e));
    }
    let i = 0;
    const byEntry = new Map<LedgerEntry, LedgerEntry>();
    for (const e of entries) {
      if (e.events) {
        const events = opened.slice(i, i + e.events.length);
        i += e.events.length;
        byEntry.set(e, { ...e, event: events[0]!, events } as LedgerEntry);
      } else byEntry.set(e, { ...e, event: opened[i++]! } as LedgerEntry);
    }
    return { ...page, items: page.items.map((e) => byEntry.get(e) ?? e) };
  }

  /** The ledger among the read models an operator lists: what it holds, how far behind the stream, its incidents. */
  @MessagePattern('qry.audit.projections')
  async projections(): Promise<{ items: ProjectionStatus[] }> {
    const [tail, lag, incidents] = await Promise.all([this.repo.tail(), this.writer.lag(), this.repo.incidentCount()]);
    const h = this.writer.health();
    return {
      items: [
        {
          name: 'audit.ledger', service: 'audit', checkpoint: tail.seq, lag, healthy: h.healthy || !h.leader, deadLetters: 0, leader: h.leader,
          ...(h.lastError ? { lastError: h.lastError } : {}), incidents,
        },
      ],
    };
  }

  /** The ledger is the record itself: it is never rebuilt, and it has no dead letters (it keeps what it cannot read as incidents). */
  @MessagePattern('cmd.audit.rebuild_projection')
  async rebuild(): Promise<never> {
    throw new KeelError('conflict', 'The ledger is the system of record; it is verified, never rebuilt. Rebuild a read model instead.');
  }

  @MessagePattern('qry.audit.dead_letters')
  async deadLetters(): Promise<{ items: never[] }> {
    return { items: [] };
  }

  @MessagePattern('qry.audit.events')
  async events(body: unknown): Promise<Page<LedgerEntry>> {
    return this.opened(await this.repo.search(parseOrThrow(auditRpc.events.request, body, 'audit search')));
  }

  /** For a person's export: the entries they are actor or subject of, oldest first, opened. */
  @MessagePattern(auditRpc.subjectEntries.subject)
  async subjectEntries(body: unknown): Promise<Page<LedgerEntry>> {
    const { page, related } = await this.repo.subjectEntries(parseOrThrow(auditRpc.subjectEntries.request, body, 'subject entries'));
    return this.opened(page, new Set(related));
  }

  @MessagePattern('qry.audit.verify')
  async verify(body: unknown): Promise<VerifyResult> {
    const q = parseOrThrow(auditRpc.verify.request, body, 'verification range');
    return this.repo.verify(q.fromSeq, q.toSeq);
  }

  @MessagePattern('qry.audit.replay')
  async replay(body: unknown): Promise<RawJson<ReplayPage>> {
    const q = parseOrThrow(auditRpc.replay.request, body, 'replay query');
    return this.repo.replay(q.afterSeq, q.limit, q.contexts);
  }

  @MessagePattern('qry.audit.checkpoints')
  async checkpoints(body: unknown): Promise<Page<Checkpoint>> {
    const q = parseOrThrow(auditRpc.checkpoints.request, body, 'checkpoint listing');
    return this.repo.checkpoints(q.cursor ? Number(q.cursor) : 0, q.limit);
  }

  /** Entries that are not valid envelopes, oldest first: each one is an incident to look into. */
  @MessagePattern('qry.audit.incidents')
  async incidents(body: unknown): Promise<Page<LedgerEntry>> {
    const q = parseOrThrow(auditRpc.incidents.request, body, 'incident listing');
    return this.repo.incidents(q.cursor ? Number(q.cursor) : 0, q.limit);
  }

  @MessagePattern('qry.audit.keys')
  async keys(): Promise<{ keys: PublicJwk[] }> {
    return { keys: await this.signingKeys.publicKeys() };
  }

  @MessagePattern('qry.audit.head')
  async head(): Promise<{ lastSeq: number; hash: string }> {
    const tail = await this.repo.tail();
    return { lastSeq: tail.seq, hash: tail.hash };
  }
}
