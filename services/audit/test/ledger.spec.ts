import { Client } from 'pg';
import { connectMessaging, EventStore, Messaging, RpcClient } from '@keel/messaging';
import { parseConfig } from '@keel/config';
import { EventEnvelope, newEventId, VerifyResult } from '@keel/contracts';
import { cleanupEnv, eventually, isolatedEnv, Stack } from '@keel/testing';
import { createDecipheriv, createHash, createPrivateKey, createPublicKey, verify as verifySignature } from 'node:crypto';
import canonicalize from 'canonicalize';

const EVENTS = 30;

function event(aggregateId: string, version: number): EventEnvelope {
  return {
    id: newEventId(),
    type: 'ledgertest.thing.noted',
    schemaVersion: 1,
    tenantId: aggregateId,
    aggregateType: 'thing',
    aggregateId,
    aggregateVersion: version,
    occurredAt: new Date().toISOString(),
    actor: { kind: 'system', id: 'ledger-test' },
    correlationId: `c-${version}`,
    data: { n: version, text: 'zürich ✓ "quoted"' },
  };
}

/** The ledger against the real database: append-only for every role, tampering found by sequence. */
describe('audit ledger', () => {
  const env = isolatedEnv('ledger');
  const stack = new Stack(env, { KEEL_CHECKPOINT_EVERY: '10', KEEL_CHECKPOINT_INTERVAL_MS: '600000' });
  let m: Messaging;
  let rpc: RpcClient;
  let admin: Client;

  const verify = (range: { fromSeq?: number; toSeq?: number } = {}) => rpc.request<VerifyResult>('qry.audit.verify', range);

  beforeAll(async () => {
    await stack.start('audit');
    m = await connectMessaging(parseConfig(env), 'ledger-test');
    rpc = new RpcClient(m);
    const store = new EventStore(m);
    const id = newEventId();
    let position = 0;
    for (let v = 1; v <= EVENTS; v++) [position] = await store.append([event(id, v)], position) as [number];
    admin = new Client({ connectionString: env.DATABASE_URL });
    await admin.connect();
    await eventually(
      async () => (await admin.query('SELECT count(*)::int AS n FROM audit.ledger')).rows[0].n as number,
      (n) => n >= EVENTS,
      { timeoutMs: 60_000, intervalMs: 100, what: `the ledger to hold the ${EVENTS} events` },
    );
  });

  afterAll(async () => {
    await admin?.end();
    await m?.nc.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('holds every event once, hash-chained, and verifies', async () => {
    const { rows } = await admin.query('SELECT seq::int, prev_hash, hash FROM audit.ledger ORDER BY seq');
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: EVENTS }, (_, i) => i + 1));
    for (let i = 1; i < rows.length; i++) expect(rows[i].prev_hash).toBe(rows[i - 1].hash);
    expect(await verify()).toEqual({ ok: true, checked: EVENTS, lastSeq: EVENTS, incidents: 0 });
    expect(await verify({ fromSeq: 10, toSeq: 20 })).toEqual({ ok: true, checked: 11, lastSeq: 20, incidents: 0 });
  });

  it('names an entry whose indexed column was changed, occurred_at by a single millisecond', async () => {
    await admin.query('ALTER TABLE audit.ledger DISABLE TRIGGER ledger_append_only');
    try {
      await admin.query(`UPDATE audit.ledger SET occurred_at = occurred_at + interval '1 millisecond' WHERE seq = 5`);
      const changed = await verify();
      expect(changed).toMatchObject({ ok: false, firstInvalidSeq: 5, checked: 4, lastSeq: 4 });
      expect(changed.problem).toMatch(/indexed columns/);
      await admin.query(`UPDATE audit.ledger SET occurred_at = occurred_at - interval '1 millisecond', tenant_id = 'someone-else' WHERE seq = 5`);
      expect((await verify()).problem).toMatch(/indexed columns/);
    } finally {
      await admin.query(`UPDATE audit.ledger SET tenant_id = envelope->>'tenantId' WHERE seq = 5`);
      await admin.query('ALTER TABLE audit.ledger ENABLE TRIGGER ledger_append_only');
    }
    expect(await verify()).toEqual({ ok: true, checked: EVENTS, lastSeq: EVENTS, incidents: 0 });
  });

  it('signs a checkpoint every 10 entries that verifies with the published key', async () => {
    const { items } = await rpc.request<{ items: { seq: number; hash: string; signedAt: string; keyId: string; signature: string }[] }>(
      'qry.audit.checkpoints',
      {},
    );
    expect(items.map((c) => c.seq)).toEqual([10, 20, 30]);
    const { keys } = await rpc.request<{ keys: (JsonWebKey & { kid: string })[] }>('qry.audit.keys', {});
    const { rows } = await admin.query('SELECT seq::int, hash FROM audit.ledger WHERE seq IN (10, 20, 30) ORDER BY seq');
    for (const [i, c] of items.entries()) {
      expect(c.hash).toBe(rows[i].hash);
      const jwk = keys.find((k) => k.kid === c.keyId)!;
      const payload = canonicalize({ seq: c.seq, hash: c.hash, signedAt: c.signedAt, keyId: c.keyId })!;
      const key = createPublicKey({ key: jwk, format: 'jwk' });
      expect(verifySignature(null, Buffer.from(payload), key, Buffer.from(c.signature, 'base64url'))).toBe(true);
      expect(verifySignature(null, Buffer.from(payload.replace(c.hash, '0'.repeat(64))), key, Buffer.from(c.signature, 'base64url'))).toBe(false);
    }
    // The private key is stored sealed under the key-encryption key, never in the clear.
    const { rows: stored } = await admin.query('SELECT private_key_enc FROM audit.signing_keys');
    const sealed: Buffer = stored[0].private_key_enc;
    expect(() => createPrivateKey({ key: sealed, format: 'der', type: 'pkcs8' })).toThrow();
    const decipher = createDecipheriv('aes-256-gcm', Buffer.from(env.KEEL_KEK!, 'base64'), sealed.subarray(0, 12));
    decipher.setAuthTag(sealed.subarray(12, 28));
    const der = Buffer.concat([decipher.update(sealed.subarray(28)), decipher.final()]);
    const publicJwk = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'jwk' });
    expect(publicJwk.x).toBe(keys[0]!.x);
  });

  it('finds a chain rewritten consistently (every hash recomputed) by its signed checkpoint', async () => {
    const { rows } = await admin.query('SELECT seq::int, envelope, hashed, prev_hash FROM audit.ledger WHERE seq >= 15 ORDER BY seq');
    expect(rows.every((r) => r.hashed === 'published')).toBe(true);
    let prev: string = rows[0].prev_hash;
    await admin.query('ALTER TABLE audit.ledger DISABLE TRIGGER ledger_append_only');
    try {
      for (const row of rows) {
        const envelope = row.seq === 15 ? { ...row.envelope, data: { ...row.envelope.data, n: -1 } } : row.envelope;
        // The hash of an entry is SHA-256(prev ‖ the bytes as published): a forger recomputes it over its own text.
        const text = JSON.stringify(envelope);
        const hash = createHash('sha256').update(prev).update(text).digest('hex');
        await admin.query('UPDATE audit.ledger SET envelope = $2, prev_hash = $3, hash = $4 WHERE seq = $1', [row.seq, text, prev, hash]);
        prev = hash;
      }
    } finally {
      await admin.query('ALTER TABLE audit.ledger ENABLE TRIGGER ledger_append_only');
    }
    const result = await verify();
    expect(result).toMatchObject({ ok: false, firstInvalidSeq: 20, lastSeq: 19 });
    expect(result.problem).toMatch(/signed checkpoint.*11\.\.20/);
  });

  it('refuses UPDATE, DELETE and TRUNCATE for the service role and for the superuser', async () => {
    const role = new Client({ connectionString: env.DATABASE_URL!.replace('postgres@', 'keel_audit:keel@') });
    await role.connect();
    try {
      for (const client of [role, admin]) {
        await expect(client.query(`UPDATE audit.ledger SET type = 'x' WHERE seq = 1`)).rejects.toThrow(/permission denied|append-only/);
        await expect(client.query('DELETE FROM audit.ledger WHERE seq = 2')).rejects.toThrow(/permission denied|append-only/);
        await expect(client.query('TRUNCATE audit.ledger')).rejects.toThrow(/permission denied|append-only/);
      }
      await expect(role.query('ALTER TABLE audit.ledger DISABLE TRIGGER ALL')).rejects.toThrow(/must be owner|permission denied/);
    } finally {
      await role.end();
    }
    const { rows } = await admin.query('SELECT count(*)::int AS n FROM audit.ledger');
    expect(rows[0].n).toBe(EVENTS);
  });

  it('names the sequence a superuser changed with the triggers disabled, and a deleted one', async () => {
    await admin.query('ALTER TABLE audit.ledger DISABLE TRIGGER ledger_append_only');
    try {
      await admin.query(`UPDATE audit.ledger SET envelope = jsonb_set(envelope::jsonb, '{data,n}', '999')::json WHERE seq = 17`);
      await admin.query('DELETE FROM audit.ledger WHERE seq = 24');
    } finally {
      await admin.query('ALTER TABLE audit.ledger ENABLE TRIGGER ledger_append_only');
    }
    const whole = await verify();
    expect(whole).toMatchObject({ ok: false, firstInvalidSeq: 17, lastSeq: 16 });
    expect(whole.problem).toMatch(/hash/);
    const after = await verify({ fromSeq: 21 });
    expect(after).toMatchObject({ ok: false, firstInvalidSeq: 24 });
    expect(after.problem).toMatch(/missing/);
    expect(await verify({ fromSeq: 1, toSeq: 16 })).toEqual({ ok: true, checked: 16, lastSeq: 16, incidents: 0 });
  });

  it('finds entries deleted at the end of the ledger by the checkpoint that was signed over them', async () => {
    await admin.query('ALTER TABLE audit.ledger DISABLE TRIGGER ledger_append_only');
    try {
      await admin.query('DELETE FROM audit.ledger WHERE seq > 28');
    } finally {
      await admin.query('ALTER TABLE audit.ledger ENABLE TRIGGER ledger_append_only');
    }
    const tail = await verify({ fromSeq: 26 });
    expect(tail).toMatchObject({ ok: false, firstInvalidSeq: 29, lastSeq: 28 });
    expect(tail.problem).toMatch(/checkpoint 30/);
  });
});
