import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { JSONCodec } from 'nats';
import { kekFrom, open as openSealed } from '@keel/crypto';
import {
  actorSubject,
  authRpc,
  ERASED,
  EventEnvelope,
  fieldSubject,
  KeelError,
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
 * Sealed values are text. A body field holds `enc:v1:<base64url(iv ‖ tag ‖ ciphertext)>` in place
 * of its value. The actor's address and user agent are sealed together, once per event, into
 * `actor.personal` = `enc:v1:<field names>:<base64url(…)>` (one cipher for both: the actor is in
 * every event, and this is the write path's cost). Whose key it is follows from the envelope, as
 * the sealer found it (`actorSubject`, `fieldSubject`). A body value is bound (associated data) to
 * its event's id and field's path: it cannot be moved to another event or field unnoticed. The
 * actor's is bound to its person, so one client's events share one ciphertext while its key is
 * cached (sealed once, not per event); it cannot be moved to another person's events, and the
 * ledger's hash chain binds every entry's bytes.
 *
 * The keys are held by one owner (the auth service, sealed under the KEK, see `SubjectKeySource`);
 * every process caches the committed ones it used for a while (`cacheMs`) and drops a key when it
 * hears that its subject was erased (the owner's answer is what says "erased").
 */

const PREFIX = 'enc:v1:';
/** Sealed actor values kept (each about 2 KiB with its key and text at most): the clients of a minute. */
const MAX_SEALED_ACTORS = 10_000;
/** The actor's sealed fields. */

/** A data subject's key as its owner has it: the key, or gone for good, or never made. */
export type SubjectKey = Buffer | 'erased' | 'absent';

/** What a key source answers: a key per subject asked for, and which of them may not be cached. */
export interface FetchedKeys {
  keys: SubjectKey[];
  /** Indexes of keys read or made inside the caller's open transaction: they may yet roll back, so they are not cached. */
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

/** Acting as a person who was erased: refused (a sign-in racing the erasure, a key of theirs). */
export class ErasedSubjectError extends KeelError {
  constructor() {
    super('invalid_token', 'This person was erased; nothing can be done as them any more.');
  }
}

/** Whether a string is a sealed personal value. */
export function isSealed(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(PREFIX);
}

const refKey = (r: SubjectRef) => `${r.tenantId}\u0000${r.subjectId}`;
/** A body value is bound to its event and field; the actor's to its person (see `actorContext`). */
const aad = (eventId: string, path: string) => `keel.personal.v1\u0000${eventId}\u0000${path}`;
const actorContext = (ref: SubjectRef) => `keel.personal.v1\u0000actor\u0000${ref.tenantId}\u0000${ref.subjectId}`;

/**
 * Random IVs from a pool refilled from the CSPRNG (one `randomBytes` call per IV costs as much as
 * the encryption itself): 96 random bits per value, as GCM asks for random IVs.
 */
const IV_POOL = Buffer.alloc(12 * 4_096);
let ivOffset = IV_POOL.length;
function nextIv(): Buffer {
  if (ivOffset >= IV_POOL.length) {
    randomFillSync(IV_POOL);
    ivOffset = 0;
  }
  const iv = Buffer.from(IV_POOL.subarray(ivOffset, ivOffset + 12));
  ivOffset += 12;
  return iv;
}

function encrypt(key: Buffer, plain: string, context: string): string {
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(context));
  const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url');
}

function decrypt(key: Buffer, sealed: string, context: string): string | null {
  const raw = Buffer.from(sealed, 'base64url');
  if (raw.length < 28) return null;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(context));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
  } catch {
    return null;
  }
}

/** Seals one body value with a data key. */
function sealValue(key: Buffer, plain: string, eventId: string, path: string): string {
  return `${PREFIX}${encrypt(key, plain, aad(eventId, path))}`;
}

/** Opens one sealed body value, or null when it does not open with this key (altered, moved, another key). */
function openValue(key: Buffer, sealed: string, eventId: string, path: string): string | null {
  return isSealed(sealed) ? decrypt(key, sealed.slice(PREFIX.length), aad(eventId, path)) : null;
}

type Actor = Record<string, unknown>;

/** The actor's personal fields present in an envelope (plain). */
function actorFields(a: Actor): string[] {
  const out: string[] = [];
  for (const f of PERSONAL_ACTOR_FIELDS) if (typeof a[f] === 'string') out.push(f);
  return out;
}

/** A body's personal values (strings only) with the objects holding them. */
interface BodySlot {
  holder: Record<string, unknown>;
  field: string;
  path: string;
  ref: SubjectRef;
}

function bodySlots(e: EventEnvelope, data: Record<string, unknown>): BodySlot[] {
  const fields = personalFieldsOf(e.type);
  if (!fields.length) return [];
  const slots: BodySlot[] = [];
  for (const f of fields) {
    let holder: unknown = data;
    for (const key of f.path.slice(0, -1)) holder = holder && typeof holder === 'object' ? (holder as Record<string, unknown>)[key] : undefined;
    const field = f.path[f.path.length - 1]!;
    if (!holder || typeof holder !== 'object' || typeof (holder as Record<string, unknown>)[field] !== 'string') continue;
    const ref = fieldSubject(e, f);
    // A personal value whose person the body does not name cannot be sealed, nor published in clear.
    if (!ref) throw new Error(`${e.type}: the personal field data.${f.path.join('.')} has no subject (its ${JSON.stringify(f.subject)} is missing)`);
    slots.push({ holder: holder as Record<string, unknown>, field, path: `data.${f.path.join('.')}`, ref });
  }
  return slots;
}

/** A copy of `data` whose objects down to the personal fields' parents can be changed without touching the original. */
function copyData(e: EventEnvelope): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...e.data };
  for (const f of personalFieldsOf(e.type)) {
    let holder = copy;
    for (const key of f.path.slice(0, -1)) {
      const next = holder[key];
      if (!next || typeof next !== 'object' || Array.isArray(next)) break;
      holder = holder[key] = { ...(next as Record<string, unknown>) };
    }
  }
  return copy;
}

/** Whether an envelope holds personal data in clear (what a process without `PersonalData` must not publish). */
export function holdsPersonalData(e: EventEnvelope): boolean {
  return actorFields(e.actor as unknown as Actor).length > 0 || bodySlots(e, e.data).length > 0;
}

export class PersonalData {
  private readonly cache = new Map<string, { key: Buffer; until: number }>();
  /**
   * Sealed actor values by person and plain value, for as long as their key is cached: the events of
   * one client (a metering producer sends thousands a minute from one address) share one ciphertext,
   * sealed once. Bound to the person, not the event (the ledger's hash chain binds it to its entry).
   */
  private readonly actors = new Map<string, Map<string, { key: Buffer; value: string; until: number }>>();
  private actorEntries = 0;
  /** When each subject's last erasure notice was heard: a fetch of its key in flight meanwhile is not cached. */
  private readonly evictedAt = new Map<string, number>();
  private fetches = 0;
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
   * Copies of `events` with every personal value sealed. Validate the plain events first: what is
   * published is what was checked, sealed. A body value of an erased person is written `"[erased]"`;
   * an event whose actor is an erased person is refused (`ErasedSubjectError`): nobody acts as them.
   */
  async seal(events: EventEnvelope[], tx?: unknown): Promise<EventEnvelope[]> {
    type Work = { index: number; actor?: { fields: string[]; ref: SubjectRef }; body: BodySlot[] };
    const work: Work[] = [];
    const refs: SubjectRef[] = [];
    let out: EventEnvelope[] | undefined;
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      const fields = actorFields(e.actor as unknown as Actor);
      const hasBody = personalFieldsOf(e.type).length > 0;
      if (!fields.length && !hasBody) continue;
      const copy: EventEnvelope = { ...e, actor: { ...e.actor }, ...(hasBody ? { data: copyData(e) } : {}) };
      const body = hasBody ? bodySlots(copy, copy.data) : [];
      if (!fields.length && !body.length) continue;
      out ??= [...events];
      out[i] = copy;
      const w: Work = { index: i, body };
      if (fields.length) {
        w.actor = { fields, ref: actorSubject(e) };
        refs.push(w.actor.ref);
      }
      for (const b of body) refs.push(b.ref);
      work.push(w);
    }
    if (!out) return events;
    const keys = await this.keysFor(refs, true, tx);
    for (const w of work) {
      const e = out[w.index]!;
      if (w.actor) {
        const key = keys.get(refKey(w.actor.ref));
        if (!(key instanceof Buffer)) throw new ErasedSubjectError();
        const a = e.actor as unknown as Actor;
        const plain = JSON.stringify(w.actor.fields.map((f) => a[f]));
        for (const f of w.actor.fields) delete a[f];
        a.personal = this.sealedActor(key, w.actor.ref, w.actor.fields, plain);
      }
      for (const b of w.body) {
        const key = keys.get(refKey(b.ref));
        b.holder[b.field] = key instanceof Buffer ? sealValue(key, b.holder[b.field] as string, e.id, b.path) : ERASED;
      }
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
    type Work = { index: number; actor?: SubjectRef; body: BodySlot[] };
    const work: Work[] = [];
    const refs: SubjectRef[] = [];
    let out: EventEnvelope[] | undefined;
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      const sealedActor = actor && isSealed((e.actor as unknown as Actor).personal);
      const hasBody = personalFieldsOf(e.type).length > 0 && bodySlots(e, e.data).some((b) => isSealed(b.holder[b.field]));
      if (!sealedActor && !hasBody) continue;
      const copy: EventEnvelope = { ...e, actor: { ...e.actor }, ...(hasBody ? { data: copyData(e) } : {}) };
      out ??= [...events];
      out[i] = copy;
      const w: Work = { index: i, body: hasBody ? bodySlots(copy, copy.data).filter((b) => isSealed(b.holder[b.field])) : [] };
      if (sealedActor) refs.push((w.actor = actorSubject(e)));
      for (const b of w.body) refs.push(b.ref);
      work.push(w);
    }
    if (!out) return events;
    const keys = await this.keysFor(refs, false);
    for (const w of work) {
      const e = out[w.index]!;
      if (w.actor) {
        const a = e.actor as unknown as Actor;
        const value = (a.personal as string).slice(PREFIX.length);
        const colon = value.indexOf(':');
        const fields = value.slice(0, colon).split(',').filter((f) => (PERSONAL_ACTOR_FIELDS as readonly string[]).includes(f));
        const key = keys.get(refKey(w.actor));
        const plain = key instanceof Buffer ? decrypt(key, value.slice(colon + 1), actorContext(w.actor)) : null;
        let values: unknown[] = [];
        try {
          values = plain === null ? [] : (JSON.parse(plain) as unknown[]);
        } catch {
          values = [];
        }
        delete a.personal;
        fields.forEach((f, j) => (a[f] = typeof values[j] === 'string' ? values[j] : ERASED));
      }
      for (const b of w.body) {
        const key = keys.get(refKey(b.ref));
        b.holder[b.field] = (key instanceof Buffer ? openValue(key, b.holder[b.field] as string, e.id, b.path) : null) ?? ERASED;
      }
    }
    return out;
  }

  /** `open` for positioned events (a consumer's batch, a replay page). */
  async openPositioned<T extends PositionedEvent>(events: T[], options: { actor?: boolean } = {}): Promise<T[]> {
    const opened = await this.open(events.map((e) => e.event as EventEnvelope), options);
    return events.map((e, i) => (opened[i] === e.event ? e : { ...e, event: opened[i]! }));
  }

  /** The subject was erased (or so a notice says): its key is dropped here; the owner is asked again at the next use. */
  forget(ref: SubjectRef): void {
    const k = refKey(ref);
    this.evictedAt.delete(k);
    this.evictedAt.set(k, ++this.fetches);
    if (this.evictedAt.size > this.maxCached) this.evictedAt.delete(this.evictedAt.keys().next().value!);
    this.cache.delete(k);
    this.actors.delete(k);
  }

  private sealedActor(key: Buffer, ref: SubjectRef, fields: string[], plain: string): string {
    const k = refKey(ref);
    const now = Date.now();
    const names = fields.join(',');
    const entry = `${names}\u0000${plain}`;
    let mine = this.actors.get(k);
    const hit = mine?.get(entry);
    if (hit && hit.key === key && hit.until > now) return hit.value;
    const value = `${PREFIX}${names}:${encrypt(key, plain, actorContext(ref))}`;
    if (this.actorEntries >= MAX_SEALED_ACTORS) {
      this.actors.clear();
      this.actorEntries = 0;
      mine = undefined;
    }
    if (!mine) this.actors.set(k, (mine = new Map()));
    if (!mine.has(entry)) this.actorEntries++;
    mine.set(entry, { key, value, until: now + this.cacheMs });
    return value;
  }

  private async keysFor(refs: SubjectRef[], create: boolean, tx?: unknown): Promise<Map<string, SubjectKey>> {
    const found = new Map<string, SubjectKey>();
    const missing: SubjectRef[] = [];
    const now = Date.now();
    for (const ref of refs) {
      const k = refKey(ref);
      if (found.has(k)) continue;
      // Inside a transaction the owner's store is asked every time (it reads the key under a lock, so
      // an erasure committing meanwhile is seen or waits): nobody acts as a person being erased.
      const hit = tx === undefined ? this.cache.get(k) : undefined;
      if (hit && hit.until > now) {
        found.set(k, hit.key);
        continue;
      }
      found.set(k, 'absent');
      missing.push(ref);
    }
    if (!missing.length) return found;
    const started = ++this.fetches;
    const { keys, uncommitted } = await this.source.keys(missing, create, tx);
    missing.forEach((ref, i) => {
      const key = keys[i]!;
      const k = refKey(ref);
      found.set(k, key);
      // An erasure of this subject heard while its key was on its way: the key may be from before it, so not kept.
      const evicted = (this.evictedAt.get(k) ?? 0) > started;
      if (key instanceof Buffer && !evicted && !uncommitted?.has(i)) this.remember(k, key);
    });
    return found;
  }

  private remember(k: string, key: Buffer): void {
    this.cache.delete(k);
    this.cache.set(k, { key, until: Date.now() + this.cacheMs });
    if (this.cache.size > this.maxCached) this.cache.delete(this.cache.keys().next().value!);
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

/** Core NATS (not the log: the erasure's event is there): every process drops the subject's key at once. */
export const erasureSubject = (prefix: string) => `${prefix}keel.personal_data.erased`;
const codec = JSONCodec<SubjectRef>();

/** Tells every process that a subject was erased (after its key was destroyed). */
export function announceErasure(m: Messaging, ref: SubjectRef): void {
  m.nc.publish(erasureSubject(m.prefix), codec.encode({ tenantId: ref.tenantId, subjectId: ref.subjectId }));
}

/**
 * Hears erasures (see `announceErasure`): the key is evicted, and the owner's answer at the next use
 * says what holds (a forged notice costs one fetch, never data). A process that missed a notice
 * keeps a key at most its cache time.
 */
export function listenForErasures(m: Messaging, pd: PersonalData): { unsubscribe(): void } {
  return m.nc.subscribe(erasureSubject(m.prefix), {
    callback: (err, msg) => {
      if (err) return;
      try {
        const ref = codec.decode(msg.data);
        if (typeof ref?.tenantId === 'string' && typeof ref?.subjectId === 'string') pd.forget(ref);
      } catch {
        // Not an erasure notice: nothing to drop.
      }
    },
  });
}
