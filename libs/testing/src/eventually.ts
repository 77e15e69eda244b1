export interface EventuallyOptions {
  /** How long to keep trying, from the first call (generous: CI machines are loaded). */
  timeoutMs?: number;
  /** Pause between attempts. */
  intervalMs?: number;
  /** What is awaited, for the error message. */
  what?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function show(value: unknown): string {
  // Duck-typed: an error from another realm (fetch's, in a jest sandbox) is no `instanceof Error`.
  if (value instanceof Error || (typeof value === 'object' && value !== null && typeof (value as Error).message === 'string' && typeof (value as Error).name === 'string')) {
    const e = value as Error & { cause?: unknown };
    return `${e.name}: ${e.message}${e.cause !== undefined ? ` (cause: ${show(e.cause)})` : ''}`;
  }
  let text: string;
  try {
    text = JSON.stringify(value, (_key, v: unknown) => (v instanceof Headers ? Object.fromEntries(v) : v));
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > 2_000 ? `${text.slice(0, 2_000)}…` : text;
}

/**
 * Calls `fn` until `check` accepts its result, and answers that result: the way to wait for
 * something asynchronous (a projection, the audit consumer, a cache expiring) without a fixed
 * sleep or a fixed number of tries. A call that throws, or a `check` that throws, counts as
 * "not yet". On timeout it throws an error naming `what` with the last value (or error) seen.
 */
export async function eventually<T>(
  fn: () => Promise<T>,
  check: (value: T) => boolean,
  { timeoutMs = 20_000, intervalMs = 50, what = 'the condition' }: EventuallyOptions = {},
): Promise<T> {
  const started = Date.now();
  let attempts = 0;
  let last: { value?: T; error?: unknown } = {};
  for (;;) {
    attempts++;
    try {
      const value = await fn();
      last = { value };
      try {
        if (check(value)) return value;
      } catch (error) {
        last = { value, error };
      }
    } catch (error) {
      last = { error };
    }
    const elapsed = Date.now() - started;
    if (elapsed >= timeoutMs) {
      const seen = [
        ...('value' in last ? [`last value: ${show(last.value)}`] : []),
        ...(last.error !== undefined ? [`last error: ${show(last.error)}`] : []),
      ];
      throw new Error(`timed out after ${elapsed} ms (${attempts} attempts) waiting for ${what}; ${seen.join('; ')}`);
    }
    await sleep(Math.min(intervalMs, Math.max(0, timeoutMs - elapsed)));
  }
}
