import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { isText, recordKeyError, storableText, text, textProblem } from './text';
import { createIdentityProviderSchema } from './sso';
import { loginSchema, profileSchema } from './auth';
import { createTenantSchema, getTenantQuerySchema, suspendTenantSchema } from './tenant';
import { auditEventsQuerySchema } from './audit';

const issues = (schema: z.ZodType, value: unknown) => {
  const result = schema.safeParse(value);
  if (result.success) throw new Error(`expected ${JSON.stringify(value)} to be refused`);
  return result.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
};

describe('text()', () => {
  it('accepts ordinary text of every script, emoji (surrogate pairs) included', () => {
    for (const value of ['', 'Acme Corp', 'Zoë Ångström', '北京市', 'مرحبا', 'a😀b', '😀', 'x\u00A0y', 'tab\u00ADsoft', '\u{10FFFD}']) {
      expect(text().parse(value)).toBe(value);
    }
  });

  it('refuses NUL, naming the code point and where it is', () => {
    expect(issues(text(), 'a\u0000b')).toEqual([{ path: '', message: 'must not contain control characters (U+0000 at index 1)' }]);
  });

  it('refuses every C0 control, DEL and every C1 control', () => {
    const controls = [...Array.from({ length: 0x20 }, (_, i) => i), ...Array.from({ length: 0x21 }, (_, i) => 0x7f + i)];
    for (const code of controls) {
      const value = `ab${String.fromCharCode(code)}`;
      expect(isText(value)).toBe(false);
      const allowedMultiline = [0x09, 0x0a, 0x0d].includes(code);
      expect(isText(value, { multiline: true })).toBe(allowedMultiline);
      expect(textProblem(value)).toMatchObject({ index: 2, codePoint: code });
    }
    expect(issues(text(), 'a\u007fb')[0]!.message).toBe('must not contain control characters (U+007F at index 1)');
    expect(issues(text(), '\u009f')[0]!.message).toBe('must not contain control characters (U+009F at index 0)');
  });

  it('refuses unpaired surrogates, high or low, anywhere, but not a well-formed pair', () => {
    expect(issues(text(), 'a\ud800b')).toEqual([{ path: '', message: 'must not contain an unpaired UTF-16 surrogate (U+D800 at index 1)' }]);
    expect(issues(text(), 'ab\udfff')[0]!.message).toBe('must not contain an unpaired UTF-16 surrogate (U+DFFF at index 2)');
    expect(issues(text(), '\ud83d')[0]!.message).toBe('must not contain an unpaired UTF-16 surrogate (U+D83D at index 0)');
    // A low surrogate before its high one is two unpaired halves.
    expect(textProblem('\ude00\ud83d')).toEqual({ index: 0, codePoint: 0xde00, kind: 'surrogate' });
    // The problem after a valid pair is found at its own index.
    expect(textProblem('😀\ud800')).toEqual({ index: 2, codePoint: 0xd800, kind: 'surrogate' });
    expect(isText('😀😀', { multiline: true })).toBe(true);
  });

  it('refuses noncharacters: U+FFFE, U+FFFF, U+FDD0–U+FDEF and the last two of every supplementary plane', () => {
    expect(issues(text(), 'a\uFFFE')[0]!.message).toBe('must not contain Unicode noncharacters (U+FFFE at index 1)');
    expect(isText('\uFFFF')).toBe(false);
    expect(isText('\uFDD0')).toBe(false);
    expect(isText('\uFDEF')).toBe(false);
    expect(isText('\uFDCF\uFDF0')).toBe(true);
    expect(textProblem('x\u{1FFFE}')).toEqual({ index: 1, codePoint: 0x1fffe, kind: 'noncharacter' });
    expect(isText('\u{10FFFF}')).toBe(false);
    expect(isText('\u{10FFFD}')).toBe(true);
  });

  it('refuses tab and line breaks in a single-line field, allows them in a multi-line one', () => {
    for (const value of ['a\tb', 'a\nb', 'a\r\nb', 'a\u2028b', 'a\u2029b']) {
      expect(isText(value)).toBe(false);
      expect(text({ multiline: true }).parse(value)).toBe(value);
    }
    expect(issues(text(), 'line\nnext')[0]!.message).toBe('must be a single line: no tab or line break (U+000A at index 4)');
    // A multi-line field still refuses the rest.
    expect(issues(text({ multiline: true }), 'a\nb\u0000')[0]!.message).toBe('must not contain control characters (U+0000 at index 3)');
  });

  it('checks the string as sent, before trimming, and stops later checks', () => {
    const name = text().trim().min(1, 'must not be empty');
    expect(name.parse('  Alice  ')).toBe('Alice');
    expect(issues(name, '\u0000')).toEqual([{ path: '', message: 'must not contain control characters (U+0000 at index 0)' }]);
    expect(issues(name, 'Alice\n')).toHaveLength(1);
    const email = text().trim().pipe(z.email('must be an email address'));
    expect(issues(email, 'a\u0000b@example.com')).toEqual([{ path: '', message: 'must not contain control characters (U+0000 at index 1)' }]);
  });

  it('names an offending record key with the key check\'s message', () => {
    const record = z.record(text().min(1), z.string(), recordKeyError);
    const found = issues(record, { 'a\u0000': 'x' });
    expect(found).toEqual([{ path: 'a\u0000', message: 'key must not contain control characters (U+0000 at index 1)' }]);
    expect(record.parse({ group: 'x' })).toEqual({ group: 'x' });
  });
});

describe('request schemas use text()', () => {
  it('the issue\'s cases: a profile name, a sign-in tenant, a tenant lookup', () => {
    expect(issues(profileSchema, { name: 'a\u0000b' })).toEqual([{ path: 'name', message: 'must not contain control characters (U+0000 at index 1)' }]);
    expect(issues(loginSchema, { tenant: 'a\u0000b', email: 'a@example.com', password: 'x' })).toEqual([
      { path: 'tenant', message: 'must not contain control characters (U+0000 at index 1)' },
    ]);
    expect(issues(getTenantQuerySchema, { idOrSlug: 'a\ud800b' })[0]).toEqual({ path: 'idOrSlug', message: 'must not contain an unpaired UTF-16 surrogate (U+D800 at index 1)' });
  });

  it('a tenant name, a suspension reason (multi-line), audit filters', () => {
    expect(issues(createTenantSchema, { slug: 'acme', name: 'Acme\u0007', plan: 'starter' })[0]!.path).toBe('name');
    expect(suspendTenantSchema.parse({ reason: 'overdue:\n3 invoices' })).toEqual({ reason: 'overdue:\n3 invoices' });
    expect(issues(suspendTenantSchema, { reason: 'overdue\u0000' })[0]!.path).toBe('reason');
    expect(issues(auditEventsQuerySchema, { actorId: 'x\u0000' })[0]!.path).toBe('actorId');
  });

  it('identity provider settings, nested and in record keys', () => {
    const base = {
      type: 'oidc',
      name: 'Okta',
      config: { issuer: 'https://idp.example.com', clientId: 'keel' },
      clientSecret: 'secret',
    };
    expect(createIdentityProviderSchema.parse(base)).toMatchObject({ name: 'Okta' });
    // URL parsing drops tabs and newlines; the text check sees them first.
    expect(issues(createIdentityProviderSchema, { ...base, config: { ...base.config, issuer: 'https://idp.exam\tple.com' } })[0]!.path).toBe('config.issuer');
    expect(issues(createIdentityProviderSchema, { ...base, config: { ...base.config, clientId: 'k\u0000' } })[0]!.path).toBe('config.clientId');
    expect(issues(createIdentityProviderSchema, { ...base, mapping: { emailClaim: 'mail\ud800' } })[0]!.path).toBe('mapping.emailClaim');
    const key = issues(createIdentityProviderSchema, { ...base, mapping: { roleClaim: 'groups', roleMapping: { 'eng\u0000': 'developer' } } })[0]!;
    expect(key).toEqual({ path: 'mapping.roleMapping.eng\u0000', message: 'key must not contain control characters (U+0000 at index 3)' });
    expect(issues(createIdentityProviderSchema, { ...base, clientSecret: 's\u0085' })[0]!.path).toBe('clientSecret');
  });
});

describe('the contracts', () => {
  it('build every string of a request from text(), not z.string() (the envelope keeps what was published)', () => {
    const offenders: string[] = [];
    for (const file of readdirSync(__dirname)) {
      if (!file.endsWith('.ts') || file.endsWith('.spec.ts') || file === 'text.ts' || file === 'envelope.ts') continue;
      readFileSync(join(__dirname, file), 'utf8')
        .split('\n')
        .forEach((line, i, lines) => {
          if (/\bz\.string\(/.test(line) || (/^\s*\.string\(/.test(line) && /\bz\s*$/.test(lines[i - 1] ?? ''))) offenders.push(`${file}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(offenders).toEqual([]);
  });
});

describe('storableText', () => {
  it('replaces what text() refuses with U+FFFD and leaves good text alone', () => {
    expect(storableText('plain ✓ 😀')).toBe('plain ✓ 😀');
    const cleaned = storableText('a\u0000b\ud800c\u0085d\ufffe\n');
    expect(cleaned).toBe('a\uFFFDb\uFFFDc\uFFFDd\uFFFD\uFFFD');
    expect(isText(cleaned)).toBe(true);
    expect(storableText('line\nbreak\tok', { multiline: true })).toBe('line\nbreak\tok');
    // An astral noncharacter (U+1FFFE, two UTF-16 units) becomes one replacement character.
    expect(storableText('x\ud83f\udffey')).toBe('x\uFFFDy');
  });
});
