import { randomBytes } from 'node:crypto';
import { authEventTypes, ERASED, EventEnvelope, isEnvelope, personalFieldsOf, SubjectRef } from '@keel/contracts';
import { seal } from '@keel/crypto';
import { ErasedSubjectError, FetchedKeys, isSealed, PersonalData, RemoteSubjectKeys, SubjectKey, SubjectKeySource, subjectKeyContext } from './personal-data';
import { sealed as sealedFor } from './event-store';
import type { Messaging } from './connection';

const T = '0190f3c0-0000-7000-8000-000000000001';
const USER = '0190f3c0-0000-7000-8000-0000000000aa';
const ADMIN = '0190f3c0-0000-7000-8000-0000000000bb';

/** A key owner in memory: counts the lookups, erases on demand, can say a key was made in an open transaction. */
class MemoryKeys implements SubjectKeySource {
  readonly keysByRef = new Map<string, Buffer | 'erased'>();
  calls = 0;
  madeInTx = false;
  async keys(refs: SubjectRef[], create: boolean, tx?: unknown): Promise<FetchedKeys> {
    this.calls++;
    const made = new Set<number>();
    const keys: SubjectKey[] = refs.map((r, i) => {
      const k = `${r.tenantId}/${r.subjectId}`;
      if (!this.keysByRef.has(k) && create) {
        this.keysByRef.set(k, randomBytes(32));
      }
      if (tx && this.madeInTx) made.add(i);
      return this.keysByRef.get(k) ?? 'absent';
    });
    return { keys, uncommitted: made };
  }
  erase(r: SubjectRef) {
    this.keysByRef.set(`${r.tenantId}/${r.subjectId}`, 'erased');
  }
}

const created = (over: Partial<EventEnvelope> = {}): EventEnvelope => ({
  id: '0190f3c0-0000-7000-8000-00000000e001',
  type: authEventTypes.userCreated,
  schemaVersion: 1,
  tenantId: T,
  aggregateType: 'user',
  aggregateId: USER,
  aggregateVersion: 1,
  occurredAt: '2026-12-02T00:00:00.000Z',
  actor: { kind: 'user', id: ADMIN, tenantId: T, ip: '203.0.113.9', userAgent: 'curl/8.5' },
  correlationId: 'c1',
  data: { email: 'ada@acme.test', name: 'Ada Lovelace', roles: ['viewer'] },
  ...over,
});

describe('personal data (crypto-shredding)', () => {
  it('the contracts mark the personal fields of user events', () => {
    expect(personalFieldsOf(authEventTypes.userCreated).map((f) => f.path.join('.'))).toEqual(['email', 'name']);
    expect(personalFieldsOf(authEventTypes.userProfileUpdated).map((f) => f.path.join('.'))).toEqual(['name']);
    expect(personalFieldsOf(authEventTypes.userLoginFailed).map((f) => f.path.join('.'))).toEqual(['ip']);
    expect(personalFieldsOf(authEventTypes.userRolesChanged)).toEqual([]);
    expect(personalFieldsOf('shop.order.placed')).toEqual([]);
  });

  it('seals body fields under the subject and the actor\'s address and user agent together under the actor, leaving the rest and the original as they were', async () => {
    const keys = new MemoryKeys();
    const pd = new PersonalData(keys);
    const plain = created();
    const [sealed] = await pd.seal([plain]);
    expect(plain).toEqual(created());
    const d = sealed!.data as Record<string, string>;
    expect(isSealed(d.email)).toBe(true);
    expect(isSealed(d.name)).toBe(true);
    expect(sealed!.actor).toEqual({ kind: 'user', id: ADMIN, tenantId: T, personal: expect.stringMatching(/^enc:v1:ip,userAgent:[A-Za-z0-9_-]+$/) });
    expect(JSON.stringify(sealed)).not.toMatch(/ada@acme|Lovelace|203\.0\.113|curl/);
    expect({ ...sealed, data: { roles: d.roles }, actor: {} }).toEqual({ ...created(), data: { roles: ['viewer'] }, actor: {} });
    expect(isEnvelope(sealed)).toBe(true);
    // One key per person: the user's for the body, the administrator's for the actor.
    expect([...keys.keysByRef.keys()].sort()).toEqual([`${T}/${USER}`, `${T}/${ADMIN}`].sort());
  });

  it('opens what it sealed: bodies only unless the actor is asked for', async () => {
    const pd = new PersonalData(new MemoryKeys());
    const sealed = await pd.seal([created()]);
    const [bodies] = await pd.open(sealed);
    expect(bodies!.data).toEqual(created().data);
    expect(isSealed(bodies!.actor.personal)).toBe(true);
    const [all] = await pd.open(sealed, { actor: true });
    expect(all).toEqual(created());
  });

  it('a user agent as long as a command may carry, of characters that take the most room, seals into a valid envelope', async () => {
    const pd = new PersonalData(new MemoryKeys());
    for (const ch of ['é', '"', '\u0001', '😀']) {
      const ua = ch.repeat(512).slice(0, 512);
      const [sealed] = await pd.seal([created({ actor: { kind: 'user', id: ADMIN, tenantId: T, ip: 'f'.repeat(64), userAgent: ua } })]);
      expect(isEnvelope(sealed)).toBe(true);
      expect((await pd.open([sealed!], { actor: true }))[0]!.actor.userAgent).toBe(ua);
    }
  });

  it('reads "[erased]" once the subject is erased, for that subject only; seals "[erased]" for them in bodies and refuses them as actor', async () => {
    const keys = new MemoryKeys();
    const pd = new PersonalData(keys);
    const sealed = await pd.seal([created()]);
    keys.erase({ tenantId: T, subjectId: USER });
    pd.forget({ tenantId: T, subjectId: USER });
    const [opened] = await pd.open(sealed, { actor: true });
    expect(opened!.data).toEqual({ email: ERASED, name: ERASED, roles: ['viewer'] });
    expect(opened!.actor.ip).toBe('203.0.113.9');
    const [after] = await pd.seal([created({ id: '0190f3c0-0000-7000-8000-00000000e002' })]);
    expect(after!.data).toMatchObject({ email: ERASED, name: ERASED });
    // Nobody acts as an erased person (a sign-in that raced the erasure, a key of theirs).
    await expect(pd.seal([created({ actor: { kind: 'user', id: USER, tenantId: T, ip: '198.51.100.1' } })])).rejects.toBeInstanceOf(ErasedSubjectError);
    // A fresh reader (no cache) finds the same from the owner.
    const [fresh] = await new PersonalData(keys).open(sealed);
    expect(fresh!.data).toMatchObject({ email: ERASED, name: ERASED });
  });

  it('an erasure notice only evicts: the owner\'s answer decides (a forged notice loses nothing)', async () => {
    const keys = new MemoryKeys();
    const pd = new PersonalData(keys);
    const sealed = await pd.seal([created()]);
    pd.forget({ tenantId: T, subjectId: USER });
    const [opened] = await pd.open(sealed);
    expect(opened!.data).toEqual(created().data);
    const [again] = await pd.seal([created()]);
    expect(isSealed((again!.data as { email: string }).email)).toBe(true);
  });

  it('does not keep a key that was on its way while an erasure was heard', async () => {
    const keys = new MemoryKeys();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: SubjectKeySource = { keys: async (refs, create, tx) => { await gate; return keys.keys(refs, create, tx); } };
    const pd = new PersonalData(slow);
    const first = pd.seal([created()]);
    pd.forget({ tenantId: T, subjectId: USER });
    release();
    await first;
    const calls = keys.calls;
    await pd.seal([created()]);
    expect(keys.calls).toBe(calls + 1);
  });

  it('a sealed value moved to another event or field does not open', async () => {
    const pd = new PersonalData(new MemoryKeys());
    const [a] = await pd.seal([created()]);
    const email = (a!.data as { email: string }).email;
    const moved = { ...a!, id: '0190f3c0-0000-7000-8000-00000000e003' };
    const [m1] = await pd.open([moved], { actor: true });
    expect((m1!.data as { email: string }).email).toBe(ERASED);
    // The actor's values are bound to the person (one ciphertext serves their events alike): moved to another person's actor, they do not open.
    expect(m1!.actor).toMatchObject({ ip: '203.0.113.9', userAgent: 'curl/8.5' });
    const [m3] = await pd.open([{ ...a!, actor: { ...a!.actor, id: USER } }], { actor: true });
    expect(m3!.actor).toMatchObject({ ip: ERASED, userAgent: ERASED });
    const [m2] = await pd.open([{ ...a!, data: { ...a!.data, name: email } }]);
    expect((m2!.data as { name: string }).name).toBe(ERASED);
  });

  it('a process without PersonalData publishes events without personal data and refuses those with some', async () => {
    const bare = {} as Messaging;
    const none = created({ type: 'auth.user.roles_changed', data: { roles: [] }, actor: { kind: 'system', id: 'auth' } });
    expect(await sealedFor(bare, [none])).toEqual([none]);
    await expect(sealedFor(bare, [created({ actor: { kind: 'system', id: 'auth' } })])).rejects.toThrow(/cannot seal personal data/);
    await expect(sealedFor(bare, [none, { ...none, actor: { kind: 'system', id: 'auth', ip: '10.0.0.1' } }])).rejects.toThrow(/cannot seal personal data/);
  });

  it('leaves values that were never sealed as they are, and seals text that merely looks sealed', async () => {
    const pd = new PersonalData(new MemoryKeys());
    const [old] = await pd.open([created()], { actor: true });
    expect(old).toEqual(created());
    const tricky = created({ data: { email: 'x@acme.test', name: 'enc:v1:AAAA', roles: [] } });
    const [round] = await pd.open(await pd.seal([tricky]));
    expect(round!.data).toEqual(tricky.data);
  });

  it('seals one person\'s same address and user agent once while the key is cached, and anew after an erasure notice', async () => {
    const pd = new PersonalData(new MemoryKeys());
    const [a, b] = await pd.seal([created(), created({ id: '0190f3c0-0000-7000-8000-00000000e004' })]);
    expect(a!.actor.personal).toBe(b!.actor.personal);
    const [other] = await pd.seal([created({ actor: { kind: 'user', id: ADMIN, tenantId: T, ip: '203.0.113.10', userAgent: 'curl/8.5' } })]);
    expect(other!.actor.personal).not.toBe(a!.actor.personal);
    pd.forget({ tenantId: T, subjectId: ADMIN });
    const [c] = await pd.seal([created()]);
    expect(c!.actor.personal).not.toBe(a!.actor.personal);
    expect((await pd.open([c!], { actor: true }))[0]!.actor).toMatchObject({ ip: '203.0.113.9', userAgent: 'curl/8.5' });
  });

  it('an address alone and a user agent alone of the same text do not share a ciphertext', async () => {
    const pd = new PersonalData(new MemoryKeys());
    const [a] = await pd.seal([created({ actor: { kind: 'user', id: ADMIN, tenantId: T, ip: 'x' } })]);
    const [b] = await pd.seal([created({ id: '0190f3c0-0000-7000-8000-00000000e005', actor: { kind: 'user', id: ADMIN, tenantId: T, userAgent: 'x' } })]);
    expect((await pd.open([b!], { actor: true }))[0]!.actor).toEqual({ kind: 'user', id: ADMIN, tenantId: T, userAgent: 'x' });
    expect((await pd.open([a!], { actor: true }))[0]!.actor).toEqual({ kind: 'user', id: ADMIN, tenantId: T, ip: 'x' });
  });

  it('inside a transaction asks the owner every time, even for a key it has cached (an erasure must be seen)', async () => {
    const keys = new MemoryKeys();
    const pd = new PersonalData(keys);
    await pd.seal([created()]);
    const calls = keys.calls;
    keys.erase({ tenantId: T, subjectId: ADMIN });
    await expect(pd.seal([created()], {})).rejects.toBeInstanceOf(ErasedSubjectError);
    expect(keys.calls).toBe(calls + 1);
  });

  it('caches committed keys, not keys read or made inside a transaction that may roll back', async () => {
    const keys = new MemoryKeys();
    const pd = new PersonalData(keys);
    await pd.seal([created()]);
    await pd.seal([created()]);
    expect(keys.calls).toBe(1);
    const inTx = new MemoryKeys();
    inTx.madeInTx = true;
    const pd2 = new PersonalData(inTx);
    await pd2.seal([created()], {});
    await pd2.seal([created()], {});
    expect(inTx.calls).toBe(2);
  });

  it('remote keys travel sealed under the KEK and are unwrapped with it', async () => {
    const kek = randomBytes(32);
    const dek = randomBytes(32);
    const ref = { tenantId: T, subjectId: USER };
    const remote = new RemoteSubjectKeys(async () => ({ keys: [{ state: 'key', sealed: seal(kek, dek, subjectKeyContext(ref)).toString('base64') }, { state: 'erased' }] }), kek);
    const { keys } = await remote.keys([ref, { tenantId: T, subjectId: ADMIN }], false);
    expect(keys[0]).toEqual(dek);
    expect(keys[1]).toBe('erased');
    // Unwrapped for another subject, it does not open.
    const swapped = new RemoteSubjectKeys(async () => ({ keys: [{ state: 'key', sealed: seal(kek, dek, subjectKeyContext(ref)).toString('base64') }] }), kek);
    await expect(swapped.keys([{ tenantId: T, subjectId: ADMIN }], false)).rejects.toThrow(/does not open/);
  });
});
