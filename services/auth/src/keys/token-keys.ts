import { generateKeyPairSync, createPrivateKey, KeyObject, randomBytes } from 'node:crypto';
import { DataSource } from 'typeorm';
import { SignJWT } from 'jose';
import { ACCESS_TOKEN_SECONDS, AccessClaims, TOKEN_AUDIENCE, TOKEN_ISSUER } from '@keel/contracts';
import { openStoredKey, seal } from '@keel/crypto';
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
  ) {}

  private async create(): Promise<{ kid: string; key: KeyObject }> {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const kid = `${new Date().toISOString().slice(0, 10)}-${randomBytes(6).toString('hex')}`;
    const jwk = { ...publicKey.export({ format: 'jwk' }), kid, alg: 'EdDSA', use: 'sig' };
    const sealed = seal(this.kek, privateKey.export({ format: 'der', type: 'pkcs8' }) as Buffer, kid);
    await this.ds.query(`INSERT INTO ${KEYS} (kid, public_jwk, private_key_enc) VALUES ($1, $2, $3)`, [kid, JSON.stringify(jwk), sealed]);
    return { kid, key: privateKey };
  }

  /** The key that signs new tokens (made on first use; replicas agree on the newest one). */
  async active(): Promise<{ kid: string; key: KeyObject }> {
    if (this.current) return this.current;
    const rows = await this.ds.query(`SELECT kid, private_key_enc FROM ${KEYS} WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1`);
    this.current = rows.length
      ? { kid: rows[0].kid, key: createPrivateKey({ key: openStoredKey(this.kek, rows[0].private_key_enc, rows[0].kid, `The token signing key ${rows[0].kid}`), format: 'der', type: 'pkcs8' }) }
      : await this.create();
    return this.current;
  }

  /** Forgets the cached key (another replica rotated). */
  invalidate(): void {
    this.current = undefined;
  }

  async rotate(): Promise<{ kid: string; retired: string[] }> {
    const [retired] = (await this.ds.query(`UPDATE ${KEYS} SET retired_at = now() WHERE retired_at IS NULL RETURNING kid`)) as [{ kid: string }[], number];
    this.current = await this.create();
    return { kid: this.current.kid, retired: retired.map((r) => r.kid) };
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
    return new SignJWT({ tid: claims.tid, sid: claims.sid, roles: claims.roles, perms: claims.perms })
      .setProtectedHeader({ alg: 'EdDSA', kid, typ: 'at+jwt' })
      .setSubject(claims.sub)
      .setIssuer(TOKEN_ISSUER)
      .setAudience(TOKEN_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(`${Math.max(1, Math.floor(lifetimeSeconds))}s`)
      .sign(key);
  }
}
