import { Injectable } from '@nestjs/common';
import {
  auditRpc, KeelError, LedgerEntry, Page, parseOrThrow, ProjectionStatus, ReplayPage, VerifyResult,
} from '@keel/contracts';
import { MessagePattern } from '@keel/messaging';
import { LedgerWriter } from './ledger-writer';
import { PublicJwk, SigningKeys } from '../signing/signing-keys';
import { Checkpoint, LedgerRepository } from './ledger.repository';

@Injectable()
export class LedgerQueries {
  constructor(
    private readonly repo: LedgerRepository,
    private readonly signingKeys: SigningKeys,
    private readonly writer: LedgerWriter,
  ) {}

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
    return this.repo.search(parseOrThrow(auditRpc.events.request, body, 'audit search'));
  }

  @MessagePattern('qry.audit.verify')
  async verify(body: unknown): Promise<VerifyResult> {
    const q = parseOrThrow(auditRpc.verify.request, body, 'verification range');
    return this.repo.verify(q.fromSeq, q.toSeq);
  }

  @MessagePattern('qry.audit.replay')
  async replay(body: unknown): Promise<ReplayPage> {
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
