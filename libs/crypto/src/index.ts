import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

/**
 * Seals a secret under the key-encryption key (AES-256-GCM): iv (12) ‖ tag (16) ‖ ciphertext.
 * `context` (e.g. the key id) is bound as associated data, so a sealed value cannot be moved
 * to another row unnoticed.
 */
export function seal(kek: Buffer, plain: Buffer, context = ''): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, iv);
  cipher.setAAD(Buffer.from(context));
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]);
}

/** A sealed value that does not open: another key-encryption key sealed it, or it was altered. */
export class SealedValueError extends Error {
  constructor(context: string) {
    super(`A secret sealed under KEEL_KEK${context ? ` (${context})` : ''} does not open: it was sealed under another KEEL_KEK, or altered.`);
    this.name = 'SealedValueError';
  }
}

export function open(kek: Buffer, sealed: Buffer, context = ''): Buffer {
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek, sealed.subarray(0, 12));
    decipher.setAAD(Buffer.from(context));
    decipher.setAuthTag(sealed.subarray(12, 28));
    return Buffer.concat([decipher.update(sealed.subarray(28)), decipher.final()]);
  } catch {
    throw new SealedValueError(context);
  }
}

/**
 * Opens a service's own stored key (a signing key). When it does not open, the error tells
 * the operator what to do: the usual cause is a database started under another KEEL_KEK.
 */
export function openStoredKey(kek: Buffer, sealed: Buffer, context: string, what: string): Buffer {
  try {
    return open(kek, sealed, context);
  } catch (error) {
    throw new Error(
      `${what} in this database does not open with this KEEL_KEK. Start with the KEEL_KEK that sealed it (with \`npm start\`, the .keel/kek of the checkout that first started Keel on this database), or point DATABASE_URL at another database.`,
      { cause: error },
    );
  }
}

export function kekFrom(base64: string | undefined): Buffer {
  const kek = Buffer.from(base64 ?? '', 'base64');
  if (kek.length !== 32) throw new Error('KEEL_KEK must be 32 bytes, base64-encoded (openssl rand -base64 32)');
  return kek;
}

/** SHA-256, hex: how high-entropy secrets (refresh tokens, API keys) are stored. */
export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** A random token, URL-safe. */
export function randomToken(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}
