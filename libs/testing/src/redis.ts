import Redis from 'ioredis';

/** The Redis client, for tests outside a package that depends on ioredis (the top-level e2e tests). */
export { Redis };
