export const BILLING_SCHEMA = 'billing';
export const BILLING_ROLE = 'keel_billing';
