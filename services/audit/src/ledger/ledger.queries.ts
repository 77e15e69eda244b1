import { Injectable } from '@nestjs/common';
import { z } from 'zod';
import { auditEventsQuerySchema, LedgerEntry, Page, parseOrThrow, ReplayPage, replayQuerySchema, VerifyResult, verifyQuerySchema } from '@keel/contracts';
import { RpcHandler } from '@keel/messaging';
import { PublicJwk, SigningKeys } from '../signing/signing-keys';
import { Checkpoint, LedgerRepository } from './ledger.repository';

const checkpointsSchema = z
  .object({ cursor: z.string().regex(/^\d{1,18}$/).optional(), limit: z.number().int().min(1).max(1_000).default(100) })
  .strict();

@Injectable()
export class LedgerQueries {
  constructor(
    private readonly repo: LedgerRepository,
    private readonly signingKeys: SigningKeys,
  ) {}

  @RpcHandler('qry.audit.events')
  async events(body: unknown): Promise<Page<LedgerEntry>> {
    return this.repo.search(parseOrThrow(auditEventsQuerySchema, body, 'audit search'));
  }

  @RpcHandler('qry.audit.verify')
  async verify(body: unknown): Promise<VerifyResult> {
    const q = parseOrThrow(verifyQuerySchema, body, 'verification range');
    return this.repo.verify(q.fromSeq, q.toSeq);
  }

  @RpcHandler('qry.audit.replay')
  async replay(body: unknown): Promise<ReplayPage> {
    const q = parseOrThrow(replayQuerySchema, body, 'replay query');
    return this.repo.replay(q.afterSeq, q.limit, q.contexts);
  }

  @RpcHandler('qry.audit.checkpoints')
  async checkpoints(body: unknown): Promise<Page<Checkpoint>> {
    const q = parseOrThrow(checkpointsSchema, body, 'checkpoint listing');
    return this.repo.checkpoints(q.cursor ? Number(q.cursor) : 0, q.limit);
  }

  /** Entries that are not valid envelopes, oldest first: each one is an incident to look into. */
  @RpcHandler('qry.audit.incidents')
  async incidents(body: unknown): Promise<Page<LedgerEntry>> {
    const q = parseOrThrow(checkpointsSchema, body, 'incident listing');
    return this.repo.incidents(q.cursor ? Number(q.cursor) : 0, q.limit);
  }

  @RpcHandler('qry.audit.keys')
  async keys(): Promise<{ keys: PublicJwk[] }> {
    return { keys: await this.signingKeys.publicKeys() };
  }

  @RpcHandler('qry.audit.head')
  async head(): Promise<{ lastSeq: number; hash: string }> {
    const tail = await this.repo.tail();
    return { lastSeq: tail.seq, hash: tail.hash };
  }
}
