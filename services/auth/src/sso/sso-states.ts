import { Inject, Injectable } from '@nestjs/common';
import Redis from 'ioredis';
import { KeelConfig } from '@keel/config';
import { randomToken, sha256Hex } from '@keel/crypto';

/** Time a user has at the identity provider before the sign-in must start again. */
const PENDING_SECONDS = 600;

/** A sign-in between its start and the provider's callback. */
export interface PendingSignIn {
  tenantId: string;
  providerId: string;
  codeVerifier: string;
  nonce: string;
  /** Keel's callback as sent to the provider; the code exchange must repeat it exactly. */
  callbackUrl: string;
  /** SHA-256 of the value the starting browser holds in a cookie (see the gateway's SsoController). */
  browserBindingHash: string;
  redirectUri?: string;
}

/**
 * Pending sign-ins live in Redis under their `state`: short-lived, rebuilt by starting again,
 * and taken atomically (GETDEL) so a callback completes at most once.
 */
@Injectable()
export class SsoStates {
  private readonly prefix: string;

  constructor(
    private readonly redis: Redis,
    @Inject('KEEL_AUTH_CONFIG') config: KeelConfig,
  ) {
    this.prefix = `${config.KEEL_REDIS_PREFIX}sso:state:`;
  }

  /** Stores the pending sign-in and answers the `state` that names it. */
  async save(pending: PendingSignIn): Promise<string> {
    const state = randomToken();
    await this.redis.set(`${this.prefix}${sha256Hex(state)}`, JSON.stringify(pending), 'EX', PENDING_SECONDS);
    return state;
  }

  async take(state: string): Promise<PendingSignIn | null> {
    const stored = await this.redis.getdel(`${this.prefix}${sha256Hex(state)}`);
    return stored ? (JSON.parse(stored) as PendingSignIn) : null;
  }
}
