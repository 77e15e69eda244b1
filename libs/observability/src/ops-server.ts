import { createServer, Server } from 'node:http';
import { metricsRegistry } from './metrics';

export interface ReadinessCheck {
  name: string;
  check(): Promise<boolean | { ok: boolean; detail?: unknown }>;
}

/** How long one readiness check may take before it counts as failed. */
export const READINESS_CHECK_TIMEOUT_MS = 3_000;

export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

/** `p`, or a `TimeoutError` after `ms` (the work itself is not cancelled, only no longer awaited). */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms} ms`)), ms);
      timer.unref?.();
    }),
  ]).finally(() => clearTimeout(timer));
}

async function runChecks(checks: ReadinessCheck[], timeoutMs: number): Promise<{ ok: boolean; checks: Record<string, unknown> }> {
  const results: Record<string, unknown> = {};
  let ok = true;
  await Promise.all(
    checks.map(async (c) => {
      try {
        const r = await withTimeout(Promise.resolve().then(() => c.check()), timeoutMs, `readiness check ${c.name}`);
        const passed = typeof r === 'boolean' ? r : r.ok;
        results[c.name] = typeof r === 'boolean' ? { ok: r } : r;
        ok &&= passed;
      } catch (error) {
        results[c.name] = { ok: false, detail: (error as Error).message };
        ok = false;
      }
    }),
  );
  return { ok, checks: results };
}

/** Answers readiness with every dependency's state; 503 when any is down or does not answer within `timeoutMs`. */
export async function readiness(checks: ReadinessCheck[], timeoutMs = READINESS_CHECK_TIMEOUT_MS): Promise<{ status: number; body: unknown }> {
  const r = await runChecks(checks, timeoutMs);
  return { status: r.ok ? 200 : 503, body: { status: r.ok ? 'ready' : 'not_ready', checks: r.checks } };
}

/** `/health`, `/ready` and `/metrics` for a process that has no public HTTP API of its own. */
export function startOpsServer(host: string, port: number, checks: ReadinessCheck[], o: { checkTimeoutMs?: number } = {}): Promise<Server> {
  const server = createServer((req, res) => {
    const send = (status: number, body: unknown, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health') return send(200, { status: 'ok' });
    if (path === '/ready') {
      void readiness(checks, o.checkTimeoutMs).then((r) => send(r.status, r.body));
      return;
    }
    if (path === '/metrics') {
      void metricsRegistry.metrics().then((text) => send(200, text, metricsRegistry.contentType));
      return;
    }
    send(404, { code: 'not_found', message: `No route ${path}` });
  });
  // A probe that hangs (a client that never reads) does not keep a socket forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

/**
 * Closes the ops server within `timeoutMs`: stops listening, ends idle keep-alive sockets at
 * once and, past the deadline, every socket still open.
 */
export async function closeOpsServer(server: Server, timeoutMs = 2_000): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  await withTimeout(closed, timeoutMs, 'closing the ops server').catch(() => server.closeAllConnections());
}
