import { KeelConfig, rolePassword } from '@keel/config';
import { provisionServiceSchema } from '@keel/database';
import { CreateLedger1700000000000 } from './migrations/1700000000000-create-ledger';
import { CreateCheckpoints1700000000002 } from './migrations/1700000000002-create-checkpoints';
import { LedgerRls1700000000004 } from './migrations/1700000000004-ledger-rls';
import { LedgerHoldsAnyEvent1700000000005 } from './migrations/1700000000005-ledger-holds-any-event';
import { LedgerHashesPublishedBytes1700000000006 } from './migrations/1700000000006-ledger-hashes-published-bytes';
import { AUDIT_ROLE, AUDIT_SCHEMA } from './schema';

export async function provisionAudit(config: KeelConfig): Promise<void> {
  await provisionServiceSchema(config.DATABASE_URL, {
    schema: AUDIT_SCHEMA,
    role: AUDIT_ROLE,
    password: rolePassword(config, AUDIT_ROLE),
    migrations: [CreateLedger1700000000000, CreateCheckpoints1700000000002, LedgerRls1700000000004, LedgerHoldsAnyEvent1700000000005, LedgerHashesPublishedBytes1700000000006],
  });
}
