import { CreateBilling1700000000001 } from './1700000000001-create-billing';
import { Budgets1700000000002 } from './1700000000002-budgets';
import { BudgetAlerts1700000000003 } from './1700000000003-budget-alerts';
import { PlanQuotas1700000000004 } from './1700000000004-plan-quotas';
import { Webhooks1700000000005 } from './1700000000005-webhooks';
import { Invoices1700000000006 } from './1700000000006-invoices';
import { Teams1700000000007 } from './1700000000007-teams';
import { CacheGenerations1700000000008 } from './1700000000008-cache-generations';
import { AccountClosed1700000000009 } from './1700000000009-account-closed';

/** The billing schema's migrations, in the order the provisioning step runs them. */
export const BILLING_MIGRATIONS = [CreateBilling1700000000001, Budgets1700000000002, BudgetAlerts1700000000003, PlanQuotas1700000000004, Webhooks1700000000005, Invoices1700000000006, Teams1700000000007, CacheGenerations1700000000008, AccountClosed1700000000009];
