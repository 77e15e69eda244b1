import { Logger } from '@keel/observability';

/**
 * Runs `work` every `ms` (each run after the last one ended), logging a failure and going on;
 * `stop()` ends it. The timer never keeps the process alive. The billing service's background
 * work (the webhook dispatcher, the invoice closer, the budget forecasts) each runs in one.
 */
export function repeating(what: string, ms: number, work: () => Promise<unknown>, logger: Logger): { stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let running = true;
  const loop = () =>
    work()
      .catch((error) => logger.warn({ err: error }, `${what} failed; retrying`))
      .finally(() => {
        if (running) timer = setTimeout(loop, ms).unref();
      });
  timer = setTimeout(loop, ms).unref();
  return {
    stop() {
      running = false;
      if (timer) clearTimeout(timer);
    },
  };
}
