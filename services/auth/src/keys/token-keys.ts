import { generateKeyPairSync, createPrivateKey, KeyObject, randomBytes } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import { SignJWT } from 'jose';
import { ACCESS_TOKEN_SECONDS, AccessClaims, authEventTypes as A, CommandMeta, PLATFORM_TENANT, TOKEN_AUDIENCE, TOKEN_ISSUER } from '@keel/contracts';
import { openStoredKey, seal } from '@keel/crypto';
import { inTenant } from '@keel/database';
import { Outbox, OutboxReceipt } from '@keel/event-sourcing';
import { AUTH_SCHEMA } from '../database/schema';

const KEYS = `"${AUTH_SCHEMA}".signing_keys`;

export interface Jwk {
  kty: string;
  crv: string;
  x: string;
  kid: string;
  alg: 'EdDSA';
  use: 'sig';
}

/**
 * Ed25519 keys that sign access tokens. Rotation retires the current key and makes a new one;
 * a retired key stays in the JWKS until the last token it signed has expired.
 */
export class TokenKeys {
  private current?: { kid: string; key: KeyObject };

  constructor(
    private readonly ds: DataSource,
    private readonly kek: Buffer,
    private readonly outbox: Outbox,
  ) {}

  /**
   * A new key, in the caller's transaction: the sealed key and its event (with the keys it
   * retires) commit together. A signing key is an aggregate of one event.
   */
  private async create(m: EntityManager, retired: string[], meta: CommandMeta): Promise<{ kid: string; key: KeyObject; receipt: OutboxReceipt }> {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const kid = `${new Date().toISOString().slice(0, 10)}-${randomBytes(6).toString('hex')}`;
    const jwk = { ...publicKey.export({ format: 'jwk' }), kid, alg: 'EdDSA', use: 'sig' };
    const sealed = seal(this.kek, privateKey.export({ format: 'der', type: 'pkcs8' }) as Buffer, kid);
    await m.query(`INSERT INTO ${KEYS} (kid, public_jwk, private_key_enc) VALUES ($1, $2, $3)`, [kid, JSON.stringify(jwk), sealed]);
    const receipt = await this.outbox.record(
      m,
      [{ tenantId: PLATFORM_TENANT, aggregateType: 'signing_key', aggregateId: kid, version: 1, type: A.signingKeyRotated, data: { kid, retired } }],
      meta,
    );
    return { kid, key: privateKey, receipt };
  }

  /** The key that signs new tokens (made on first use; replicas agree on the newest one). */
  async active(): Promise<{ kid: string; key: KeyObject }> {
    if (this.current) return this.current;
    const rows = await this.ds.query(`SELECT kid, private_key_enc FROM ${KEYS} WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1`);
    if (rows.length) {
      this.current = { kid: rows[0].kid, key: createPrivateKey({ key: openStoredKey(this.kek, rows[0].private_key_enc, rows[0].kid, `The token signing key ${rows[0].kid}`), format: 'der', type: 'pkcs8' }) };
    } else {
      // The first key: its event is committed with it and published by the relay (not awaited here).
      const made = await inTenant(this.ds, PLATFORM_TENANT, (m) => this.create(m, [], { actor: { kind: 'system', id: 'auth' }, correlationId: 'first-signing-key' }));
      this.current = { kid: made.kid, key: made.key };
    }
    return this.current;
  }

  /** Forgets the cached key (another replica rotated). */
  invalidate(): void {
    this.current = undefined;
  }

  /** Retires the current key and makes a new one, in one transaction with its event; answers once it is on the log. */
  async rotate(meta: CommandMeta): Promise<{ kid: string; retired: string[]; position: number }> {
    const made = await inTenant(this.ds, PLATFORM_TENANT, async (m) => {
      const [retired] = (await m.query(`UPDATE ${KEYS} SET retired_at = now() WHERE retired_at IS NULL RETURNING kid`)) as [{ kid: string }[], number];
      const kids = retired.map((r) => r.kid);
      return { ...(await this.create(m, kids, meta)), retired: kids };
    });
    this.current = { kid: made.kid, key: made.key };
    const { position } = await this.outbox.sent(made.receipt);
    return { kid: made.kid, retired: made.retired, position };
  }

  /** Keys a verifier needs: the active ones and those retired less than a token lifetime ago. */
  async jwks(): Promise<{ keys: Jwk[] }> {
    const rows = await this.ds.query(
      `SELECT public_jwk FROM ${KEYS} WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1) ORDER BY created_at DESC`,
      [ACCESS_TOKEN_SECONDS + 60],
    );
    return { keys: rows.map((r: { public_jwk: Jwk }) => r.public_jwk) };
  }

  async sign(claims: Omit<AccessClaims, 'iss' | 'aud' | 'iat' | 'exp'>, lifetimeSeconds = ACCESS_TOKEN_SECONDS): Promise<string> {
    const { kid, key } = await this.active();
    return new SignJWT({ tid: claims.tid, sid: claims.sid, roles: claims.roles, perms: claims.perms, auth_time: claims.auth_time, amr: claims.amr })
      .setProtectedHeader({ alg: 'EdDSA', kid, typ: 'at+jwt' })
      .setSubject(claims.sub)
      .setIssuer(TOKEN_ISSUER)
      .setAudience(TOKEN_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(`${Math.max(1, Math.floor(lifetimeSeconds))}s`)
      .sign(key);
  }
}
