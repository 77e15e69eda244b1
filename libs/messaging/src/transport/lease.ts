import { randomUUID } from 'node:crypto';
import { KV } from 'nats';
import { Logger } from '@keel/observability';

/** How long a lease lives without renewal: a replica that died is replaced within this time. */
export const LEASE_TTL_MS = 10_000;
const RENEW_EVERY_MS = LEASE_TTL_MS / 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Leadership of one durable event consumer among the replicas of a service, held as a key in a
 * JetStream KV bucket whose entries age out after LEASE_TTL_MS (nats-server 2.9 has no per-key
 * TTL): the holder renews it with a compare-and-set on its revision; another replica can create
 * the key only once it has aged out or was given up.
 */
export class KvLease {
  private readonly owner = randomUUID();
  private revision = 0;
  private renewedAt = 0;
  private timer?: NodeJS.Timeout;
  private released = false;

  constructor(private readonly kv: () => Promise<KV>, private readonly key: string, private readonly logger: Logger) {}

  async acquire(): Promise<void> {
    this.released = false;
    const kv = await this.kv();
    while (!this.released) {
      try {
        this.hold(kv, await kv.create(this.key, new TextEncoder().encode(this.owner)));
        return;
      } catch (error) {
        if (!/wrong last sequence|key exists/i.test((error as Error).message)) throw error;
        // Still ours (this replica stood down while NATS was away, say): take it back at once.
        const entry = await kv.get(this.key);
        if (entry?.operation === 'PUT' && new TextDecoder().decode(entry.value) === this.owner) {
          try {
            this.hold(kv, await kv.update(this.key, new TextEncoder().encode(this.owner), entry.revision));
            return;
          } catch {
            // Taken meanwhile: wait like anyone else.
          }
        }
        await sleep(RENEW_EVERY_MS);
      }
    }
    throw new Error(`lease ${this.key}: released while waiting for it`);
  }

  private hold(kv: KV, revision: number): void {
    this.revision = revision;
    this.renewedAt = Date.now();
    clearInterval(this.timer);
    this.timer = setInterval(() => void this.renew(kv), RENEW_EVERY_MS);
    this.timer.unref();
  }

  async stillHeld(): Promise<boolean> {
    return this.revision > 0 && Date.now() - this.renewedAt < LEASE_TTL_MS - RENEW_EVERY_MS;
  }

  async release(): Promise<void> {
    this.released = true;
    clearInterval(this.timer);
    this.timer = undefined;
    if (!this.revision) return;
    const revision = this.revision;
    this.revision = 0;
    // Best effort: a lease not given up ages out after LEASE_TTL_MS.
    await this.kv()
      .then((kv) => kv.delete(this.key, { previousSeq: revision }))
      .catch(() => undefined);
  }

  private async renew(kv: KV): Promise<void> {
    if (!this.revision) return;
    try {
      this.revision = await kv.update(this.key, new TextEncoder().encode(this.owner), this.revision);
      this.renewedAt = Date.now();
    } catch (error) {
      if (/wrong last sequence/i.test((error as Error).message)) {
        // Someone else holds it now (ours aged out): stillHeld() turns false and the consumer stands down.
        this.logger.warn({ lease: this.key }, 'event consumer lease lost');
        this.revision = 0;
        clearInterval(this.timer);
      }
      // Anything else (NATS reconnecting) is retried at the next tick; stillHeld() turns false if it lasts.
    }
  }
}
