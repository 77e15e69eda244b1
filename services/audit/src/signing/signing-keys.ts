import { createPrivateKey, createPublicKey, generateKeyPairSync, KeyObject, randomBytes, sign, verify } from 'node:crypto';
import { openStoredKey, seal } from '@keel/crypto';
import { DataSource } from 'typeorm';
import { AUDIT_SCHEMA } from '../database/schema';
import { canonicalJson } from '../ledger/hash-chain';

const KEYS = `"${AUDIT_SCHEMA}".signing_keys`;

export interface PublicJwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  kid: string;
  alg: 'EdDSA';
  use: 'sig';
}

export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
}

/** The bytes a checkpoint signature covers. */
export function checkpointPayload(c: { seq: number; hash: string; signedAt: string; keyId: string }): string {
  return canonicalJson({ seq: c.seq, hash: c.hash, signedAt: c.signedAt, keyId: c.keyId });
}

export function signCheckpoint(key: SigningKey, c: { seq: number; hash: string; signedAt: string }): string {
  return sign(null, Buffer.from(checkpointPayload({ ...c, keyId: key.keyId })), key.privateKey).toString('base64url');
}

export function verifyCheckpoint(jwk: PublicJwk, c: { seq: number; hash: string; signedAt: string; keyId: string; signature: string }): boolean {
  const publicKey = createPublicKey({ key: jwk as unknown as import('node:crypto').JsonWebKey, format: 'jwk' });
  return verify(null, Buffer.from(checkpointPayload(c)), publicKey, Buffer.from(c.signature, 'base64url'));
}

/** Ed25519 keys for ledger checkpoints, stored encrypted; made on first use. */
export class SigningKeys {
  private current?: SigningKey;

  constructor(
    private readonly ds: DataSource,
    private readonly kek: Buffer,
  ) {}

  async active(): Promise<SigningKey> {
    if (this.current) return this.current;
    const rows = await this.ds.query(`SELECT key_id, private_key_enc FROM ${KEYS} ORDER BY created_at DESC LIMIT 1`);
    if (rows.length) {
      const der = openStoredKey(this.kek, rows[0].private_key_enc, '', `The ledger signing key ${rows[0].key_id}`);
      this.current = { keyId: rows[0].key_id, privateKey: createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }) };
      return this.current;
    }
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const keyId = `ledger-${new Date().toISOString().slice(0, 10)}-${randomBytes(4).toString('hex')}`;
    const jwk = { ...publicKey.export({ format: 'jwk' }), kid: keyId, alg: 'EdDSA', use: 'sig' };
    const sealed = seal(this.kek, privateKey.export({ format: 'der', type: 'pkcs8' }) as Buffer);
    await this.ds.query(`INSERT INTO ${KEYS} (key_id, public_key_jwk, private_key_enc) VALUES ($1, $2, $3)`, [keyId, JSON.stringify(jwk), sealed]);
    this.current = { keyId, privateKey };
    return this.current;
  }

  async publicKeys(): Promise<PublicJwk[]> {
    const rows = await this.ds.query(`SELECT public_key_jwk FROM ${KEYS} ORDER BY created_at`);
    return rows.map((r: { public_key_jwk: PublicJwk }) => r.public_key_jwk);
  }
}
