import { CreateLedger1700000000000 } from './1700000000000-create-ledger';
import { CreateCheckpoints1700000000002 } from './1700000000002-create-checkpoints';
import { LedgerRls1700000000004 } from './1700000000004-ledger-rls';
import { LedgerHoldsAnyEvent1700000000005 } from './1700000000005-ledger-holds-any-event';
import { LedgerHashesPublishedBytes1700000000006 } from './1700000000006-ledger-hashes-published-bytes';
import { LedgerUserColumn1700000000007 } from './1700000000007-ledger-user-column';

/** The audit schema's migrations, in the order the provisioning step runs them. */
export const AUDIT_MIGRATIONS = [CreateLedger1700000000000, CreateCheckpoints1700000000002, LedgerRls1700000000004, LedgerHoldsAnyEvent1700000000005, LedgerHashesPublishedBytes1700000000006, LedgerUserColumn1700000000007];
