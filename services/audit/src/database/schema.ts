export const AUDIT_SCHEMA = 'audit';
export const AUDIT_ROLE = 'keel_audit';
