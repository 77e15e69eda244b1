import { Controller, Get, Req } from '@nestjs/common';
import { z } from 'zod';
import { auditEventsQuerySchema, KeelError, LedgerEntry, Page, permissions as P, text, VerifyResult } from '@keel/contracts';
import { RpcClient } from '@keel/messaging';
import { Endpoint, Input, ValidInput } from '../http/endpoint';
import { KeelRequest } from '../http/request-context';

// The audit service's own query, with numbers coming as query-string text.
const eventsQuery = auditEventsQuerySchema.extend({
  from: z.iso.datetime().optional().describe('occurredAt at or after (ISO-8601)'),
  to: z.iso.datetime().optional().describe('occurredAt before (ISO-8601)'),
  limit: z.coerce.number().int().min(1).max(1_000).default(100),
});

const verifyQuery = z
  .object({ fromSeq: z.coerce.number().int().min(1).optional(), toSeq: z.coerce.number().int().min(1).optional() })
  .strict()
  .refine((v) => v.fromSeq === undefined || v.toSeq === undefined || v.fromSeq <= v.toSeq, {
    message: 'fromSeq must not be greater than toSeq',
    path: ['fromSeq'],
  });

const checkpointsQuery = z
  .object({
    cursor: text().regex(/^\d{1,18}$/, 'must be a cursor this API returned').optional(),
    limit: z.coerce.number().int().min(1).max(1_000).default(100),
  })
  .strict();

@Controller('api/v1/audit')
export class AuditController {
  constructor(private readonly rpc: RpcClient) {}

  @Get('events')
  @Endpoint({ permission: P.auditRead, tag: 'audit', summary: 'Search the ledger (newest first by default; cursor pagination)', query: eventsQuery, response: 'LedgerPage' })
  async events(@Req() req: KeelRequest, @Input() input: ValidInput<unknown, z.infer<typeof eventsQuery>>): Promise<Page<LedgerEntry>> {
    const p = req.principal!;
    // Outside the platform, a caller reads its own tenant's trail only.
    if (!p.crossTenant) {
      if (input.query.tenantId && input.query.tenantId !== p.tenantId) throw new KeelError('not_found', 'No such tenant in your scope.');
      return this.rpc.request('qry.audit.events', { ...input.query, tenantId: p.tenantId });
    }
    return this.rpc.request('qry.audit.events', input.query);
  }

  @Get('checkpoints')
  @Endpoint({ permission: P.auditRead, tag: 'audit', summary: 'Signed ledger checkpoints (Ed25519 over sequence, hash, time and key id), oldest first', query: checkpointsQuery, response: 'CheckpointPage' })
  async checkpoints(@Input() input: ValidInput<unknown, z.infer<typeof checkpointsQuery>>) {
    return this.rpc.request('qry.audit.checkpoints', input.query);
  }

  @Get('keys')
  @Endpoint({ permission: 'public', tag: 'audit', summary: 'Public keys (JWK set) that verify ledger checkpoints', response: 'JwkSet' })
  async keys() {
    return this.rpc.request('qry.audit.keys', {});
  }

  @Get('verify')
  @Endpoint({ permission: P.auditVerify, tag: 'audit', summary: 'Verify the hash chain over a range of sequences', query: verifyQuery, response: 'VerifyResult' })
  async verify(@Input() input: ValidInput<unknown, z.infer<typeof verifyQuery>>): Promise<VerifyResult> {
    // Verifying a long ledger takes a while; give it more than a normal request.
    return this.rpc.request('qry.audit.verify', input.query, 120_000);
  }
}
