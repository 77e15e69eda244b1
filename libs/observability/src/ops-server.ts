import { createServer, Server } from 'node:http';
import { metricsRegistry } from './metrics';

export interface ReadinessCheck {
  name: string;
  check(): Promise<boolean | { ok: boolean; detail?: unknown }>;
}

async function runChecks(checks: ReadinessCheck[]): Promise<{ ok: boolean; checks: Record<string, unknown> }> {
  const results: Record<string, unknown> = {};
  let ok = true;
  await Promise.all(
    checks.map(async (c) => {
      try {
        const r = await c.check();
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

/** Answers readiness with every dependency's state; 503 when any is down. */
export async function readiness(checks: ReadinessCheck[]): Promise<{ status: number; body: unknown }> {
  const r = await runChecks(checks);
  return { status: r.ok ? 200 : 503, body: { status: r.ok ? 'ready' : 'not_ready', checks: r.checks } };
}

/** `/health`, `/ready` and `/metrics` for a process that has no public HTTP API of its own. */
export function startOpsServer(host: string, port: number, checks: ReadinessCheck[]): Promise<Server> {
  const server = createServer((req, res) => {
    const send = (status: number, body: unknown, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health') return send(200, { status: 'ok' });
    if (path === '/ready') {
      void readiness(checks).then((r) => send(r.status, r.body));
      return;
    }
    if (path === '/metrics') {
      void metricsRegistry.metrics().then((text) => send(200, text, metricsRegistry.contentType));
      return;
    }
    send(404, { code: 'not_found', message: `No route ${path}` });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
