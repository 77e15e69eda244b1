import { DiscardPolicy, JetStreamManager, RetentionPolicy, StorageType, StreamConfig } from 'nats';
import { subjects } from '@keel/contracts';

const NANOS_PER_MS = 1_000_000;

export interface EventStreamOptions {
  stream: string;
  prefix: string;
  replicas: number;
}

/** The `EVENTS` stream of ARCHITECTURE.md §2: nothing is ever removed by the application. */
export function eventStreamConfig(o: EventStreamOptions): Partial<StreamConfig> & { name: string } {
  return {
    name: o.stream,
    subjects: [subjects.allEvents(o.prefix)],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_msgs: -1,
    max_bytes: -1,
    max_age: 0,
    num_replicas: o.replicas,
    duplicate_window: 2 * 60 * 1000 * NANOS_PER_MS,
    deny_delete: true,
    deny_purge: true,
    allow_direct: true,
  };
}

/** Creates the stream, or brings an existing one to the expected settings. Safe to race. */
export async function ensureEventStream(jsm: JetStreamManager, o: EventStreamOptions): Promise<void> {
  const config = eventStreamConfig(o);
  try {
    const info = await jsm.streams.info(o.stream);
    const c = info.config;
    const drift =
      c.duplicate_window !== config.duplicate_window ||
      c.allow_direct !== true ||
      c.deny_delete !== true ||
      c.deny_purge !== true ||
      c.num_replicas !== config.num_replicas ||
      c.subjects.join() !== config.subjects!.join();
    if (drift) await jsm.streams.update(o.stream, { ...c, ...config } as StreamConfig);
  } catch (error) {
    if (!isNotFound(error)) throw error;
    try {
      await jsm.streams.add(config);
    } catch (addError) {
      if (!/already in use/i.test(String((addError as Error).message))) throw addError;
    }
  }
}

export function isNotFound(error: unknown): boolean {
  const e = error as { code?: string | number; api_error?: { err_code?: number }; message?: string };
  return e?.code === '404' || e?.api_error?.err_code === 10059 || e?.api_error?.err_code === 10014 || /not found/i.test(String(e?.message));
}
