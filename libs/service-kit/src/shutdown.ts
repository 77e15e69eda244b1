import { Logger, withTimeout } from '@keel/observability';

/** One step of a shutdown: what it is, the work, and how long it may take. */
export interface ShutdownStep {
  name: string;
  timeoutMs: number;
  run(): Promise<unknown>;
}

/**
 * Runs `steps` one after another, each bounded by its own timeout: a step that fails or hangs
 * is logged and abandoned, and the next one still runs. Resolves with the names of the steps
 * that did not finish cleanly.
 */
export async function orderedShutdown(steps: ShutdownStep[], logger: Pick<Logger, 'warn'>): Promise<string[]> {
  const failed: string[] = [];
  for (const step of steps) {
    try {
      await withTimeout(Promise.resolve().then(() => step.run()), step.timeoutMs, `shutdown step "${step.name}"`);
    } catch (err) {
      failed.push(step.name);
      logger.warn({ err, step: step.name }, `shutdown step "${step.name}" did not finish; going on`);
    }
  }
  return failed;
}

/**
 * Time limits of a process's shutdown; the whole never exceeds `SHUTDOWN_DEADLINE_MS`. The
 * application's own steps (a service's stop hooks, projection runners, pools) each get
 * `SHUTDOWN_TIMEOUTS.resource` within the application's share.
 */
export const SHUTDOWN_TIMEOUTS = { opsServer: 2_000, application: 10_000, telemetry: 3_000, resource: 5_000 } as const;
export const SHUTDOWN_DEADLINE_MS = 20_000;

/**
 * On SIGTERM or SIGINT, runs `steps` in order (each bounded) and exits: 0 when every step
 * finished, 1 otherwise, and 1 at the hard deadline whatever still hangs.
 */
export function exitOnSignal(name: string, steps: ShutdownStep[], logger: Logger): void {
  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    const deadline = setTimeout(() => {
      logger.error({ deadlineMs: SHUTDOWN_DEADLINE_MS }, `${name} did not stop within the deadline; exiting`);
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS);
    deadline.unref();
    const failed = await orderedShutdown(steps, logger);
    process.exit(failed.length ? 1 : 0);
  };
  process.once('SIGTERM', () => void shutdown());
  process.once('SIGINT', () => void shutdown());
}
