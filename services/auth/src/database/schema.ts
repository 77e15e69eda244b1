export const AUTH_SCHEMA = 'auth';
export const AUTH_ROLE = 'keel_auth';
