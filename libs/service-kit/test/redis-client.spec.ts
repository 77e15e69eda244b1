import { createConnection, createServer, Server, Socket } from 'node:net';
import { AddressInfo } from 'node:net';
import Redis from 'ioredis';
import { REDIS_CLIENT_OPTIONS } from '../src/service-module';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/**
 * A TCP proxy to the real Redis that can go silent (as a SIGSTOPped Redis or a dead link does:
 * the connection stays open, nothing is answered), without touching the shared server.
 */
async function silenceableProxy(): Promise<{ url: string; silence(): void; close(): Promise<void> }> {
  const target = new URL(REDIS_URL);
  let silent = false;
  const sockets: Socket[] = [];
  const server: Server = createServer((client) => {
    const upstream = createConnection(Number(target.port || 6379), target.hostname);
    sockets.push(client, upstream);
    client.on('data', (d) => { if (!silent) upstream.write(d); });
    upstream.on('data', (d) => { if (!silent) client.write(d); });
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    silence: () => { silent = true; },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("the service kit's Redis client", () => {
  it('rejects a command a silent Redis never answers within about a second', async () => {
    const proxy = await silenceableProxy();
    const redis = new Redis(proxy.url, { ...REDIS_CLIENT_OPTIONS, disconnectTimeout: 50 });
    redis.on('error', () => undefined);
    try {
      await new Promise<void>((resolve, reject) => { redis.once('ready', resolve); redis.once('error', reject); });
      expect(await redis.ping()).toBe('PONG');
      proxy.silence();
      const started = Date.now();
      await expect(redis.ping()).rejects.toThrow(/timed out/i);
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(REDIS_CLIENT_OPTIONS.commandTimeout - 50);
      expect(took).toBeLessThan(2_500);
    } finally {
      redis.disconnect();
      await proxy.close();
    }
  }, 30_000);
});
