import { EntityManager } from 'typeorm';
import { authEventTypes as A, PositionedEvent } from '@keel/contracts';
import { RetryLaterError } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { Projection } from '@keel/projections';
import type { Cleanup, PersonalDataService } from './personal-data.service';

/**
 * Erasures applied from the log (issue 7): for every `auth.user.erased`, the person's cleanup
 * (their data keys destroyed, credentials, factors, links, sessions and email reservation gone),
 * idempotent. It finishes an erasure whose command stopped after its event, and its checkpoint
 * lives in the same database as the key store: a database restored from a backup replays every
 * erasure recorded after that backup, so no erased person's key comes back with it. It owns no
 * table; a rebuild applies every erasure again, which changes nothing.
 */
export class ErasuresProjection implements Projection {
  readonly name = 'erasures';
  readonly contexts = ['auth'];
  readonly aggregateType = 'user';
  readonly tables: string[] = [];

  private lastReported = 0;

  constructor(
    private readonly personalData: PersonalDataService,
    private readonly logger: Logger,
  ) {}

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<Cleanup[]> {
    const done: Cleanup[] = [];
    for (const { event: e } of events) {
      if (e.type !== A.userErased) continue;
      const meta = { actor: { kind: 'system' as const, id: 'auth-erasures' }, correlationId: e.correlationId };
      try {
        done.push(await this.personalData.cleanUp(m, e.tenantId, e.aggregateId, meta));
      } catch (error) {
        // Never a dead letter (an operator's skip would abandon an erasure): retried until it applies,
        // and reported (at most every 10 s) while it does not; the projection's lag shows it too.
        const message = `the erasure of ${e.aggregateId} did not apply yet: ${(error as Error).message}`;
        if (Date.now() - this.lastReported > 10_000) {
          this.lastReported = Date.now();
          this.logger.error({ err: error, userId: e.aggregateId, tenantId: e.tenantId }, 'erasure not applied; retrying');
        }
        throw new RetryLaterError(message);
      }
    }
    return done;
  }

  async afterCommit(done: Cleanup[]): Promise<void> {
    for (const d of done) await this.personalData.settle(d);
  }
}
