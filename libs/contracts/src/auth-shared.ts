import { z } from 'zod';
import { commandMetaSchema } from './contract';
import { actorSchema, envelopeSchema } from './envelope';
import { text } from './text';

// What the auth contract (auth.ts) and its SSO part (sso.ts) share. Its own module so that auth.ts
// can gather the SSO routes and subjects into the auth service's contract without an import cycle.

export const tokenPairSchema = z
  .object({ accessToken: text(), refreshToken: text(), tokenType: z.literal('Bearer'), expiresIn: z.number().int() })
  .meta({ id: 'TokenPair' });

/** Command metadata for the auth service, which also needs what the caller holds ("*" for the operator), so nobody grants what they lack. */
export const authMetaSchema = commandMetaSchema.extend({ permissions: z.union([z.literal('*'), z.array(text())]) }).strict();
/** Who is signing in, as the gateway saw them. */
export const clientSchema = z
  .object({ ip: actorSchema.shape.ip, userAgent: actorSchema.shape.userAgent, correlationId: envelopeSchema.shape.correlationId })
  .strict();
