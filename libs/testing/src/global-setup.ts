import { randomBytes } from 'node:crypto';

/** One id per test run; test files derive their own namespaces from it (see isolatedEnv). */
export default async function globalSetup(): Promise<void> {
  process.env.KEEL_TEST_RUN ??= `t${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
}
