import { connect, JetStreamClient, JetStreamManager, NatsConnection } from 'nats';
import { KeelConfig } from '@keel/config';
import { coalesceNatsWrites } from './write-coalescing';
import type { PersonalData } from './personal-data';

/** One NATS connection with its JetStream handles and the deployment's naming. */
export interface Messaging {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  stream: string;
  prefix: string;
  requestTimeoutMs: number;
  /**
   * Seals personal data in what this process publishes and opens it for its readers (the service
   * kit sets it for every service; without it nothing is sealed, as in the generic libraries' tests).
   */
  personalData?: PersonalData;
}

export async function connectMessaging(config: KeelConfig, name: string): Promise<Messaging> {
  coalesceNatsWrites();
  const nc = await connect({
    servers: config.NATS_URL.split(','),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    // Failures are reported with the subject and what was asked; the async stack trace each
    // request would otherwise capture up front costs more than it tells.
    noAsyncTraces: true,
  });
  const jsm = await nc.jetstreamManager();
  return {
    nc,
    js: nc.jetstream(),
    jsm,
    stream: config.KEEL_STREAM,
    prefix: config.KEEL_SUBJECT_PREFIX,
    requestTimeoutMs: config.KEEL_REQUEST_TIMEOUT_MS,
  };
}

export async function closeMessaging(m: Messaging | undefined): Promise<void> {
  if (!m || m.nc.isClosed()) return;
  await m.nc.drain().catch(() => m.nc.close());
}

/** Durable consumer names may not contain dots; derive one from a deployment prefix and a name. */
export function durableName(prefix: string, name: string): string {
  return `${prefix}${name}`.replace(/[^A-Za-z0-9_-]/g, '_');
}
