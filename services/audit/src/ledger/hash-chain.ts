import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';

/** prev_hash of the first entry. */
export const GENESIS_HASH = '0'.repeat(64);

/** RFC 8785 canonical JSON: the exact bytes the chain hashes. */
export function canonicalJson(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) throw new Error('value has no JSON form');
  return text;
}

/** hash = SHA-256(prev_hash as lowercase hex ‖ canonical JSON of the envelope), hex. */
export function chainHash(prevHash: string, envelope: unknown): string {
  return createHash('sha256').update(prevHash).update(canonicalJson(envelope)).digest('hex');
}
