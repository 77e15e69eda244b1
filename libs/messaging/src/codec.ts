const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

export function decodeJson<T = unknown>(data: Uint8Array): T {
  return JSON.parse(decoder.decode(data)) as T;
}

/**
 * An RPC answer that is already JSON text (e.g. rows Postgres printed as JSON): `serveRpc` puts it
 * in the reply as it is, without parsing and encoding it again. The caller decodes it as usual, into
 * `T`. The text must be one valid JSON value; whoever builds it vouches for that.
 */
export class RawJson<T = unknown> {
  declare readonly _answer?: T;
  constructor(readonly json: string) {}
}

/** The reply of an RPC answer, `{ ok: true, value }`, with a RawJson value placed as it is. */
export function encodeOkReply(value: unknown): Uint8Array {
  return value instanceof RawJson ? encoder.encode(`{"ok":true,"value":${value.json}}`) : encodeJson({ ok: true, value });
}
