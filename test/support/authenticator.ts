import { base32Decode, hotp, totpStep } from '../../services/auth/src/mfa/totp';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * An authenticator app: the codes of the secret it was given. Each step is handed out once;
 * the server accepts one step ahead of its clock, so two codes come without waiting.
 */
export class Authenticator {
  private readonly secret: Buffer;
  private lastStep = -1;

  constructor(base32: string) {
    this.secret = base32Decode(base32);
  }

  async next(): Promise<string> {
    const step = Math.max(totpStep(Date.now()), this.lastStep + 1);
    while (step > totpStep(Date.now()) + 1) await sleep(200);
    this.lastStep = step;
    return hotp(this.secret, step);
  }

  /** The code last handed out (already used). */
  get used(): string {
    return hotp(this.secret, this.lastStep);
  }

  /** A well-formed code of no step the server accepts now. */
  get wrong(): string {
    const now = totpStep(Date.now());
    const near = new Set([-1, 0, 1, 2].map((d) => hotp(this.secret, now + d)));
    for (let step = now + 1_000; ; step++) if (!near.has(hotp(this.secret, step))) return hotp(this.secret, step);
  }
}
