import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { JSONCodec } from 'nats';
import { kekFrom, open as openSealed } from '@keel/crypto';
import {
  actorSubject,
  authRpc,
  ERASED,
  EventEnvelope,
  fieldSubject,
  PERSONAL_ACTOR_FIELDS,
  personalFieldsOf,
  PositionedEvent,
  SubjectRef,
} from '@keel/contracts';
import type { Messaging } from './connection';
import type { RpcClient } from './rpc';

/**
 * Crypto-shredding (issue 7; ARCHITECTURE.md §3): every personal field of an event (those its
 * contract marks `personal()`, and the actor's address and user agent) is sealed with the data key
 * of the person it is about, AES-256-GCM, before the event is published: the stream and the ledger
 * (whose hash covers what was published) hold only ciphertext. Readers open them with the same
 * keys; once a person is erased their key is gone, and every copy reads `"[erased]"` — in the
 * ledger, in a projection rebuilt from it, in every backup — while the chain still verifies.
 *
 * A sealed value is text: `enc:v1:<tenantId>:<subjectId>:<base64url(iv ‖ tag ‖ ciphertext)>`. The
 * subject is in clear (a pseudonym: a user's random id), so a reader knows which key to ask for;
 * the event's id and the field's path are bound as associated data, so a sealed value cannot be
 * moved to another event or field unnoticed.
 *
 * The keys are held by one owner (the auth service, sealed under the KEK, see `SubjectKeySource`);
 * every process caches the ones it used for a while (`cacheMs`), forgets a key when it hears that
 * its subject was erased, and remembers erasures for good.
 */

const PREFIX = 'enc:v1:';

/** A data subject's key as its owner has it: the key, or gone for good, or never made. */
export type SubjectKey = Buffer | 'erased' | 'absent';

/** What a key source answers: a key per subject asked for, and which of them it made inside the caller's transaction. */
export interface FetchedKeys {
  keys: SubjectKey[];
  /** Indexes of keys made inside the caller's open transaction: they may yet roll back, so they are not cached. */
  uncommitted?: ReadonlySet<number>;
}

/** Where data keys come from (the owner's store, or the owner over NATS). */
export interface SubjectKeySource {
  /**
   * The keys of `refs`, in order. `create`: make the missing ones (sealing); never for an erased
   * subject. `tx`: the caller's open transaction, when the owner's store is local (its new keys
   * commit with what they seal).
   */
  keys(refs: SubjectRef[], create: boolean, tx?: unknown): Promise<FetchedKeys>;
}

export interface PersonalDataOptions {
  /** How long a key is kept in memory after it was fetched (an erasure heard evicts it at once). */
  cacheMs?: number;
  maxCached?: number;
}

/** Whether a string is a sealed personal value. */
export function isSealed(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(PREFIX);
}

/** The subject a sealed value names (null when it is not one). */
export function sealedSubject(value: string): SubjectRef | null {
  if (!isSealed(value)) return null;
  const rest = value.slice(PREFIX.length);
  const first = rest.indexOf(':');
  const last = rest.lastIndexOf(':');
  if (first <= 0 || last <= first) return null;
  return { tenantId: rest.slice(0, first), subjectId: rest.slice(first + 1, last) };
}

const refKey = (r: SubjectRef) => `${r.tenantId}\u0000${r.subjectId}`;
const aad = (eventId: string, path: string) => Buffer.from(`keel.personal.v1\u0000${eventId}\u0000${path}`);

/** Seals one value with a data key. */
export function sealValue(key: Buffer, ref: SubjectRef, plain: string, eventId: string, path: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(aad(eventId, path));
  const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
  return `${PREFIX}${ref.tenantId}:${ref.subjectId}:${Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url')}`;
}

/** Opens one sealed value, or null when it does not open with this key (altered, moved, another key). */
export function openValue(key: Buffer, sealed: string, eventId: string, path: string): string | null {
  const raw = Buffer.from(sealed.slice(sealed.lastIndexOf(':') + 1), 'base64url');
  if (raw.length < 28) return null;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
    decipher.setAAD(aad(eventId, path));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
  } catch {
    return null;
  }
}

/** One personal value of an envelope: where it sits, whose it is. */
interface Slot {
  holder: Record<string, unknown>;
  field: string;
  /** `actor.ip`, `data.email`: bound into the ciphertext. */
  path: string;
  ref: SubjectRef;
}

/** The personal values an envelope holds (strings only), with the objects holding them. `actor`: the actor's too. */
function slotsOf(e: EventEnvelope, actor: boolean): Slot[] {
  const slots: Slot[] = [];
  if (actor) {
    const a = e.actor as unknown as Record<string, unknown>;
    let ref: SubjectRef | undefined;
    for (const field of PERSONAL_ACTOR_FIELDS) {
      if (typeof a[field] === 'string') slots.push({ holder: a, field, path: `actor.${field}`, ref: (ref ??= actorSubject(e)) });
    }
  }
  for (const f of personalFieldsOf(e.type)) {
    let holder: unknown = e.data;
    for (const key of f.path.slice(0, -1)) holder = holder && typeof holder === 'object' ? (holder as Record<string, unknown>)[key] : undefined;
    const field = f.path[f.path.length - 1]!;
    if (!holder || typeof holder !== 'object' || typeof (holder as Record<string, unknown>)[field] !== 'string') continue;
    const ref = fieldSubject(e, f);
    if (ref) slots.push({ holder: holder as Record<string, unknown>, field, path: `data.${f.path.join('.')}`, ref });
  }
  return slots;
}

/** A copy of an envelope whose actor and body (down to the personal fields' parents) can be changed without touching the original. */
function copyForSlots(e: EventEnvelope): EventEnvelope {
  const copy = { ...e, actor: { ...e.actor }, data: { ...e.data } };
  for (const f of personalFieldsOf(e.type)) {
    let holder: Record<string, unknown> = copy.data;
    for (const key of f.path.slice(0, -1)) {
      const next = holder[key];
      if (!next || typeof next !== 'object' || Array.isArray(next)) break;
      holder = holder[key] = { ...(next as Record<string, unknown>) };
    }
  }
  return copy;
}

export class PersonalData {
  private readonly cache = new Map<string, { key: Buffer | 'erased'; until: number }>();
  private readonly cacheMs: number;
  private readonly maxCached: number;

  constructor(
    private readonly source: SubjectKeySource,
    options: PersonalDataOptions = {},
  ) {
    this.cacheMs = options.cacheMs ?? 60_000;
    this.maxCached = options.maxCached ?? 50_000;
  }

  /**
   * Copies of `events` with every personal value sealed (an erased subject's written as
   * `"[erased]"`). Validate the plain events first: what is published is what was checked, sealed.
   */
  async seal(events: EventEnvelope[], tx?: unknown): Promise<EventEnvelope[]> {
    let out: EventEnvelope[] | undefined;
    const work: { slot: Slot; index: number }[] = [];
    for (let i = 0; i < events.length; i++) {
      if (!slotsOf(events[i]!, true).length) continue;
      out ??= [...events];
      const copy = copyForSlots(events[i]!);
      out[i] = copy;
      for (const slot of slotsOf(copy, true)) work.push({ slot, index: i });
    }
    if (!out) return events;
    const keys = await this.keysFor(work.map((w) => w.slot.ref), true, tx);
    for (const { slot, index } of work) {
      const key = keys.get(refKey(slot.ref));
      slot.holder[slot.field] = key instanceof Buffer ? sealValue(key, slot.ref, slot.holder[slot.field] as string, out[index]!.id, slot.path) : ERASED;
    }
    return out;
  }

  /**
   * Copies of `events` with their sealed values opened: `"[erased]"` for an erased subject's (or a
   * value that does not open). `actor`: the actor's address and user agent too (the audit trail);
   * without it they stay sealed (a projection has no use for them). Values that are not sealed (a
   * ledger written before sealing) are left as they are.
   */
  async open(events: EventEnvelope[], options: { actor?: boolean } = {}): Promise<EventEnvelope[]> {
    const actor = options.actor ?? false;
    let out: EventEnvelope[] | undefined;
    const work: { slot: Slot; index: number }[] = [];
    for (let i = 0; i < events.length; i++) {
      const sealed = slotsOf(events[i]!, actor).filter((s) => isSealed(s.holder[s.field]));
      if (!sealed.length) continue;
      out ??= [...events];
      const copy = copyForSlots(events[i]!);
      out[i] = copy;
      for (const slot of slotsOf(copy, actor)) {
        const value = slot.holder[slot.field] as string;
        // The value names its own subject (the one it was sealed for).
        const ref = sealedSubject(value);
        if (ref) work.push({ slot: { ...slot, ref }, index: i });
      }
    }
    if (!out) return events;
    const keys = await this.keysFor(work.map((w) => w.slot.ref), false);
    for (const { slot, index } of work) {
      const key = keys.get(refKey(slot.ref));
      const opened = key instanceof Buffer ? openValue(key, slot.holder[slot.field] as string, out[index]!.id, slot.path) : null;
      slot.holder[slot.field] = opened ?? ERASED;
    }
    return out;
  }

  /** `open` for positioned events (a consumer's batch, a replay page). */
  async openPositioned<T extends PositionedEvent>(events: T[], options: { actor?: boolean } = {}): Promise<T[]> {
    const opened = await this.open(events.map((e) => e.event as EventEnvelope), options);
    return events.map((e, i) => (opened[i] === e.event ? e : { ...e, event: opened[i]! }));
  }

  /** The subject was erased: its key is dropped here and never fetched again by this process. */
  erased(ref: SubjectRef): void {
    this.cache.set(refKey(ref), { key: 'erased', until: Number.POSITIVE_INFINITY });
  }

  private async keysFor(refs: SubjectRef[], create: boolean, tx?: unknown): Promise<Map<string, SubjectKey>> {
    const found = new Map<string, SubjectKey>();
    const missing: SubjectRef[] = [];
    const now = Date.now();
    for (const ref of refs) {
      const k = refKey(ref);
      if (found.has(k)) continue;
      const hit = this.cache.get(k);
      if (hit && hit.until > now) {
        found.set(k, hit.key);
        continue;
      }
      found.set(k, 'absent');
      missing.push(ref);
    }
    if (!missing.length) return found;
    const { keys, uncommitted } = await this.source.keys(missing, create, tx);
    missing.forEach((ref, i) => {
      const key = keys[i]!;
      found.set(refKey(ref), key);
      if (key === 'erased') this.erased(ref);
      else if (key instanceof Buffer && !uncommitted?.has(i)) this.remember(refKey(ref), key);
    });
    return found;
  }

  private remember(k: string, key: Buffer): void {
    this.cache.delete(k);
    this.cache.set(k, { key, until: Date.now() + this.cacheMs });
    if (this.cache.size > this.maxCached) {
      for (const [old, entry] of this.cache) {
        if (entry.key !== 'erased') {
          this.cache.delete(old);
          break;
        }
      }
    }
  }
}

/** The context a data key is sealed under (KEK, AES-256-GCM): bound to its subject, so a wrapped key cannot be moved to another. */
export function subjectKeyContext(ref: SubjectRef): string {
  return `keel.subject_key\u0000${ref.tenantId}\u0000${ref.subjectId}`;
}

/** What the owner answers for one subject (`cmd.auth.subject_keys`). */
export type WrappedSubjectKey = { state: 'key'; sealed: string } | { state: 'erased' | 'absent' };

/**
 * Data keys from their owner over NATS (`cmd.auth.subject_keys`), wrapped under the KEK in transit
 * and unwrapped here: a process without the KEK learns nothing from the answers.
 */
export class RemoteSubjectKeys implements SubjectKeySource {
  constructor(
    private readonly request: (refs: SubjectRef[], create: boolean) => Promise<{ keys: WrappedSubjectKey[] }>,
    private readonly kek: Buffer,
  ) {}

  async keys(refs: SubjectRef[], create: boolean): Promise<FetchedKeys> {
    const out: SubjectKey[] = [];
    for (let i = 0; i < refs.length; i += 500) {
      const chunk = refs.slice(i, i + 500);
      const { keys } = await this.request(chunk, create);
      chunk.forEach((ref, j) => {
        const k = keys[j];
        out.push(k?.state === 'key' ? openSealed(this.kek, Buffer.from(k.sealed, 'base64'), subjectKeyContext(ref)) : (k?.state ?? 'absent'));
      });
    }
    return { keys: out };
  }
}

/** Data keys from the auth service, their owner (`cmd.auth.subject_keys`). */
export function remoteSubjectKeys(rpc: RpcClient, kekBase64: string): SubjectKeySource {
  return new RemoteSubjectKeys((refs, create) => rpc.request(authRpc.subjectKeys.subject, { refs, create }), kekFrom(kekBase64));
}

/** For a process without the KEK: events without personal data pass; one with it is refused, never published in clear. */
export const noSubjectKeys: SubjectKeySource = {
  keys: async () => {
    throw new Error('This process has no KEEL_KEK, so it can neither seal nor open personal data; give it KEEL_KEK (services.manifest.json "secrets").');
  },
};

/** Core NATS (not the log: the erasure's event is there): every process drops the subject's key at once. */
export const erasureSubject = (prefix: string) => `${prefix}keel.personal_data.erased`;
const codec = JSONCodec<SubjectRef>();

/** Tells every process that a subject was erased (after its key was destroyed). */
export function announceErasure(m: Messaging, ref: SubjectRef): void {
  m.nc.publish(erasureSubject(m.prefix), codec.encode({ tenantId: ref.tenantId, subjectId: ref.subjectId }));
}

/** Hears erasures (see `announceErasure`): a process that missed one keeps a key at most its cache time. */
export function listenForErasures(m: Messaging, pd: PersonalData): { unsubscribe(): void } {
  return m.nc.subscribe(erasureSubject(m.prefix), {
    callback: (err, msg) => {
      if (err) return;
      try {
        const ref = codec.decode(msg.data);
        if (typeof ref?.tenantId === 'string' && typeof ref?.subjectId === 'string') pd.erased(ref);
      } catch {
        // Not an erasure notice: nothing to drop.
      }
    },
  });
}
