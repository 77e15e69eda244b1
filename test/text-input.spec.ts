import { randomUUID } from 'node:crypto';
import { connect, NatsConnection } from 'nats';
import { cleanupEnv, eventually, httpClient, isolatedEnv, Stack } from '@keel/testing';

type Json = Record<string, any>;
type Path = (string | number)[];

const PASSWORD = 'correct horse battery staple';

/**
 * Characters no field may hold, as a JSON body carries them (JSON.stringify writes a lone
 * surrogate as the escape `\ud800`, which a JSON parser turns back into the lone code unit) and
 * as a URL carries them (a lone surrogate has no UTF-8: the closest a client can send is its
 * generalized-UTF-8 bytes, which are not valid UTF-8).
 */
const POISONS = [
  { label: 'NUL', value: 'a\u0000b', url: 'a%00b', codePoint: 'U+0000' },
  { label: 'an unpaired surrogate', value: 'a\ud800b', url: 'a%ED%A0%80b', codePoint: 'U+D800' },
  { label: 'ESC', value: 'a\u001bb', url: 'a%1Bb', codePoint: 'U+001B' },
  { label: 'a C1 control (NEL)', value: 'a\u0085b', url: 'a%C2%85b', codePoint: 'U+0085' },
];

/**
 * A string schema with a rule of its own (a format, an enum, a pattern): the field must be named,
 * the message may be that rule's. Only free text must be refused by the text check, naming the character.
 */
const ruledByFormat = (s: Json) => s.format !== undefined || s.enum !== undefined || s.const !== undefined || s.pattern !== undefined;

/** The first alternative of a union (what `sample` builds), else the schema itself. */
const chosen = (s: Json): Json => {
  const options = (s.anyOf ?? s.oneOf) as Json[] | undefined;
  return options ? (options.find((o) => o.type !== 'null') ?? options[0]!) : s;
};

const same = (a: Path, b: Path) => a.length === b.length && a.every((x, i) => String(x) === String(b[i]));
const startsWith = (path: Path, prefix: Path) => prefix.length <= path.length && prefix.every((x, i) => String(x) === String(path[i]));

/** A valid string for a schema, guessed from its format, pattern, length and the field's name. */
function sampleString(s: Json, name: string): string {
  if (s.const !== undefined) return s.const;
  if (s.enum) return s.enum[0];
  if (typeof s.default === 'string') return s.default;
  switch (s.format) {
    case 'uuid':
      return randomUUID();
    case 'email':
      return 'someone@example.com';
    case 'date-time':
      return new Date(Date.now() + 86_400_000).toISOString();
    case 'uri':
    case 'url':
      return 'https://example.com/';
  }
  if (/email/i.test(name)) return 'someone@example.com';
  if (/issuer|uri|url/i.test(name)) return 'https://idp.example.com';
  const min = s.minLength ?? 1;
  const candidates = ['valid', 'abc-def', 'abc.def', '1', '123456', 'abcdefghijklmnop', '2026-01', `valid${'x'.repeat(Math.max(0, min - 5))}`];
  const fits = (c: string) => c.length >= min && c.length <= (s.maxLength ?? Infinity) && (!s.pattern || new RegExp(s.pattern).test(c));
  const found = candidates.find(fits);
  if (!found) throw new Error(`no sample for ${name}: ${JSON.stringify(s)}`);
  return found;
}

/**
 * A value that the schema accepts, with `target.value` placed at `target.path` (with `key`, as a
 * key of the record at that path instead). Optional properties are left out unless the target is
 * inside them (or the object would otherwise be empty).
 */
function sample(schema: Json, target?: { path: Path; value: string; key?: boolean }, here: Path = [], name = ''): unknown {
  const s = chosen(schema);
  if (target && same(here, target.path) && !target.key) return target.value;
  const type = Array.isArray(s.type) ? s.type.find((t: string) => t !== 'null') : s.type;
  if (s.const !== undefined) return s.const;
  if (s.enum) return s.enum[0];
  if (type === 'object' || s.properties) {
    const out: Json = {};
    const required = new Set<string>(s.required ?? []);
    for (const [prop, propSchema] of Object.entries((s.properties ?? {}) as Record<string, Json>)) {
      const inside = target && startsWith(target.path, [...here, prop]);
      if (required.has(prop) || inside) out[prop] = sample(propSchema, target, [...here, prop], prop);
    }
    // An object of optional fields may still want one of them ("name a field to change").
    const [first] = Object.entries((s.properties ?? {}) as Record<string, Json>);
    if (!Object.keys(out).length && !required.size && first) out[first[0]] = sample(first[1], target, [...here, first[0]], first[0]);
    if (target?.key && same(here, target.path) && s.additionalProperties) out[target.value] = sample(s.additionalProperties, undefined, [...here, target.value]);
    return out;
  }
  if (type === 'array') {
    const inside = target && startsWith(target.path, [...here, 0]);
    const n = Math.max(s.minItems ?? 0, inside ? 1 : 0);
    return Array.from({ length: n }, (_, i) => sample(s.items ?? {}, target, [...here, i], name));
  }
  if (type === 'string') return sampleString(s, name);
  if (type === 'integer' || type === 'number') return s.default ?? s.minimum ?? 1;
  if (type === 'boolean') return s.default ?? false;
  return s.default ?? null;
}

interface Slot {
  path: Path;
  key?: boolean;
  /** Only a text check can refuse it: the message must name the character. */
  freeText: boolean;
}

/** Every place in a body schema that holds a string: properties at any depth, array items and record keys. */
function stringSlots(schema: Json, here: Path = []): Slot[] {
  const s = chosen(schema);
  const type = Array.isArray(s.type) ? s.type.find((t: string) => t !== 'null') : s.type;
  if (type === 'string') return [{ path: here, freeText: !ruledByFormat(s) }];
  if (type === 'array' && s.items) return stringSlots(s.items, [...here, 0]);
  const out: Slot[] = [];
  for (const [prop, propSchema] of Object.entries((s.properties ?? {}) as Record<string, Json>)) out.push(...stringSlots(propSchema, [...here, prop]));
  if (s.propertyNames && chosen(s.propertyNames).type === 'string') out.push({ path: here, key: true, freeText: !ruledByFormat(chosen(s.propertyNames)) });
  return out;
}

interface Operation {
  method: string;
  template: string;
  operationId: string;
  params: { name: string; in: 'path' | 'query'; required: boolean; schema: Json }[];
  headers: string[];
  body?: Json;
}

/** Every operation of the OpenAPI document, so a new route is covered without touching this test. */
function operations(doc: Json): Operation[] {
  const out: Operation[] = [];
  for (const [template, methods] of Object.entries(doc.paths as Record<string, Json>)) {
    for (const [method, op] of Object.entries(methods as Record<string, Json>)) {
      out.push({
        method: method.toUpperCase(),
        template,
        operationId: op.operationId,
        params: ((op.parameters ?? []) as Json[]).filter((p) => p.in === 'path' || p.in === 'query') as Operation['params'],
        headers: ((op.parameters ?? []) as Json[]).filter((p) => p.in === 'header' && chosen(p.schema).type === 'string').map((p) => p.name),
        body: op.requestBody?.content?.['application/json']?.schema,
      });
    }
  }
  return out;
}

/** The URL of an operation with valid parameters, and `poison` (already URL-encoded) as parameter `poisoned`. */
function urlOf(op: Operation, poisoned?: { name: string; in: 'path' | 'query'; url: string }): string {
  let path = op.template;
  const query: string[] = [];
  for (const p of op.params) {
    const value = poisoned && poisoned.name === p.name && poisoned.in === p.in ? poisoned.url : undefined;
    if (p.in === 'path') path = path.replace(`{${p.name}}`, value ?? encodeURIComponent(String(sample(p.schema, undefined, [], p.name))));
    else if (value !== undefined) query.push(`${encodeURIComponent(p.name)}=${value}`);
    else if (p.required) query.push(`${encodeURIComponent(p.name)}=${encodeURIComponent(String(sample(p.schema, undefined, [], p.name)))}`);
  }
  return query.length ? `${path}?${query.join('&')}` : path;
}

/** Text no field can hold, sent to every route that takes a string: 400 naming the field, nothing written. */
describe('text no field can hold', () => {
  const env = isolatedEnv('textinput');
  const stack = new Stack(env);
  let nc: NatsConnection;
  let operator: ReturnType<typeof httpClient>;
  let anonymous: ReturnType<typeof httpClient>;
  let doc: Json;
  let tenant: { id: string; slug: string };
  let user: { id: string; token: string };

  const lastSeq = async () => (await (await nc.jetstreamManager()).streams.info(env.KEEL_STREAM!)).state.last_seq;

  /** 400 problem+json, code validation_failed, naming exactly `field` (where it is) and, for free text, the character. */
  const expectRefused = (res: { status: number; headers: Headers; body: any }, where: string, field: string, what: string, codePoint?: string) => {
    const context = `${what}: ${res.status} ${JSON.stringify(res.body)}`;
    expect({ context, status: res.status }).toEqual({ context, status: 400 });
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect({ context, code: res.body.code }).toEqual({ context, code: 'validation_failed' });
    const errors = (res.body.errors ?? []) as { in?: string; field: string; message: string }[];
    expect({ context, fields: errors.map((e) => `${e.in}:${e.field}`) }).toEqual({ context, fields: [`${where}:${field}`] });
    if (codePoint) expect({ context, message: errors[0]!.message }).toEqual({ context, message: expect.stringContaining(codePoint) });
  };

  beforeAll(async () => {
    await stack.start('audit', 'auth', 'tenant', 'billing', 'gateway');
    operator = httpClient(stack.gatewayUrl, stack.token);
    anonymous = httpClient(stack.gatewayUrl);
    nc = await connect({ servers: env.NATS_URL });
    const created = await operator('POST', '/api/v1/tenants', { body: { slug: 'text-co', name: 'Text Co', plan: 'professional' } });
    expect(created.status).toBe(201);
    tenant = { id: created.body.tenant.id, slug: 'text-co' };
    await eventually(
      () => operator('GET', `/api/v1/tenants/${tenant.id}?consistentWith=${created.body.position}`),
      (r) => r.status === 200,
      { timeoutMs: 30_000, intervalMs: 100, what: 'the tenant in the read model' },
    );
    const made = await operator('POST', `/api/v1/tenants/${tenant.id}/users`, { body: { email: 'ada@text.test', name: 'Ada', password: PASSWORD, roles: ['tenant_admin'] } });
    expect(made.status).toBe(201);
    const login = await eventually(
      () => anonymous('POST', '/api/v1/auth/login', { body: { tenant: tenant.slug, email: 'ada@text.test', password: PASSWORD } }),
      (r) => r.status === 200,
      { timeoutMs: 20_000, intervalMs: 200, what: 'the new user to sign in' },
    );
    user = { id: made.body.id, token: login.body.accessToken };
    const openapi = await anonymous('GET', '/openapi.json');
    expect(openapi.status).toBe(200);
    doc = openapi.body;
  });

  afterAll(async () => {
    await nc?.close();
    await stack.stop();
    await cleanupEnv(env);
  });

  it('the issue\'s cases: a profile name, a sign-in tenant, a tenant by id or slug', async () => {
    const before = await lastSeq();
    const me = httpClient(stack.gatewayUrl, user.token);
    for (const poison of POISONS) {
      const rawBody = JSON.stringify({ name: poison.value });
      const profile = await me('PATCH', '/api/v1/auth/profile', { rawBody });
      expectRefused(profile, 'body', 'name', `profile name with ${poison.label}`, poison.codePoint);

      const signIn = await anonymous('POST', '/api/v1/auth/login', { rawBody: JSON.stringify({ tenant: poison.value, email: 'ada@text.test', password: PASSWORD }) });
      expectRefused(signIn, 'body', 'tenant', `sign-in tenant with ${poison.label}`, poison.codePoint);

      // Both as a platform operator and as a tenant's own administrator (whose tenant is checked first).
      for (const [who, client] of [['operator', operator], ['tenant admin', me]] as const) {
        const res = await client('GET', `/api/v1/tenants/${poison.url}`);
        if (poison.label === 'an unpaired surrogate') {
          // Not UTF-8 at all: refused while the URL is decoded, before any route runs.
          expectRefused(res, 'path', '(path)', `GET /tenants/${poison.url} as ${who}`);
        } else {
          expectRefused(res, 'path', 'idOrSlug', `GET /tenants/${poison.url} as ${who}`, poison.codePoint);
        }
      }
      const rbac = await me('GET', `/api/v1/tenants/${poison.url}/roles`);
      if (poison.label !== 'an unpaired surrogate') expectRefused(rbac, 'path', 'tenantId', `GET /tenants/${poison.url}/roles as tenant admin`, poison.codePoint);
      else expectRefused(rbac, 'path', '(path)', `GET /tenants/${poison.url}/roles as tenant admin`);
    }
    // The JSON text really carries the lone surrogate as an escape (what the parser turns into the code unit).
    expect(JSON.stringify({ name: 'a\ud800b' })).toBe('{"name":"a\\ud800b"}');
    const still = await me('GET', `/api/v1/tenants/${tenant.id}/users/${user.id}`);
    expect(still.body.name).toBe('Ada');
    expect(await lastSeq()).toBe(before);
  });

  it('every string in every request body, path, query and header of the OpenAPI document is refused with 400 naming it, and nothing is written', async () => {
    const ops = operations(doc);
    expect(ops.length).toBeGreaterThan(30);
    const before = await lastSeq();
    let bodies = 0;
    let params = 0;
    let headers = 0;
    const covered = new Set<string>();
    for (const op of ops) {
      const slots = op.body ? stringSlots(op.body) : [];
      for (const slot of slots) {
        for (const poison of POISONS) {
          const body = sample(op.body!, { path: slot.path, value: poison.value, ...(slot.key ? { key: true } : {}) });
          const field = [...slot.path, ...(slot.key ? [poison.value] : [])].join('.');
          const res = await operator(op.method, urlOf(op), { rawBody: JSON.stringify(body) });
          expectRefused(res, 'body', field, `${op.method} ${op.template} body ${field} with ${poison.label}`, slot.freeText ? poison.codePoint : undefined);
          bodies++;
          covered.add(op.operationId);
        }
      }
      for (const p of op.params) {
        const s = chosen(p.schema);
        if (s.type !== 'string') continue;
        for (const poison of POISONS) {
          const url = urlOf(op, { name: p.name, in: p.in, url: poison.url });
          // A route with a body gets a valid one, so the parameter is the only thing wrong.
          const options = op.body ? { rawBody: JSON.stringify(sample(op.body)) } : {};
          const res = await operator(op.method, url, options);
          const what = `${op.method} ${url}`;
          if (poison.label === 'an unpaired surrogate' && p.in === 'path') {
            // Bytes that are not UTF-8 in the path: refused while the URL is decoded, before any route runs.
            expectRefused(res, 'path', '(path)', what);
          } else if (poison.label === 'an unpaired surrogate') {
            // A query string keeps bytes that are not UTF-8 as they were sent ("a%ED%A0%80b"), which is
            // well-formed text (no URL can carry a lone surrogate): whatever the route answers, it is not
            // a failure of Keel's, and (below) nothing is written.
            expect({ what, status: res.status, body: res.body }).toEqual({ what, status: expect.any(Number), body: expect.anything() });
            expect({ what, serverError: res.status >= 500 }).toEqual({ what, serverError: false });
          } else {
            expectRefused(res, p.in, p.name, what, ruledByFormat(s) ? undefined : poison.codePoint);
          }
          params++;
          covered.add(op.operationId);
        }
      }
    }
    // Request headers the document declares (Idempotency-Key, If-Match), with what HTTP can carry in
    // a header value: a tab and a C1 control (as its Latin-1 byte); a valid request otherwise.
    for (const op of ops) {
      for (const header of op.headers) {
        for (const value of ['a\tb', 'a\u0085b']) {
          const options = { headers: { [header]: value }, ...(op.body ? { rawBody: JSON.stringify(sample(op.body)) } : {}) };
          const res = await operator(op.method, urlOf(op), options);
          expectRefused(res, 'header', header, `${op.method} ${op.template} header ${header}: ${JSON.stringify(value)}`);
          headers++;
        }
      }
    }
    // The routes the issue names are among those the document yields.
    for (const id of ['auth.updateProfile', 'auth.login', 'tenants.create', 'tenants.get', 'users.createUser', 'identity-providers.create', 'audit.events']) {
      expect([...covered]).toContain(id);
    }
    expect(bodies).toBeGreaterThan(100);
    expect(params).toBeGreaterThan(50);
    expect(headers).toBeGreaterThan(10);
    expect(await lastSeq()).toBe(before);
  });

  it('a valid request built the same way goes through (the samples are not refused for another reason)', async () => {
    // The sweep above insists the poisoned field is the only one named; here the same samples,
    // unpoisoned, are accepted by validation (a team, a tenant).
    const team = doc.paths['/api/v1/tenants/{tenantId}/teams'].post.requestBody.content['application/json'].schema;
    const res = await operator('POST', `/api/v1/tenants/${tenant.id}/teams`, { body: sample(team) });
    expect(res.status).toBe(201);
    const create = doc.paths['/api/v1/tenants'].post.requestBody.content['application/json'].schema;
    const made = await operator('POST', '/api/v1/tenants', { body: sample(create) });
    expect(made.status).toBe(201);
  });
});
