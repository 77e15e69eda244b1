import { cleanupRun } from './environment';

/** Whatever a test file could not clean up (a crash, a timeout) goes when the run ends. */
export default async function globalTeardown(): Promise<void> {
  if (process.env.KEEL_TEST_RUN) await cleanupRun(process.env.KEEL_TEST_RUN);
}
