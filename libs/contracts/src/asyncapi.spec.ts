import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Parser } from '@asyncapi/parser';
import { allRoutes, allRpcs, commands, queries, rpcs } from './api';
import { asyncApiDocument } from './asyncapi';
import { eventSchemas } from './events';
import * as contracts from './index';

type Json = Record<string, any>;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'node_modules' || name === 'dist' ? [] : sources(path);
    return name.endsWith('.ts') && !name.endsWith('.spec.ts') ? [path] : [];
  });
}

describe('the AsyncAPI document', () => {
  const doc = asyncApiDocument() as Json;

  it('is a valid AsyncAPI 3.0.0 document (the AsyncAPI parser finds no error)', async () => {
    expect(doc.asyncapi).toBe('3.0.0');
    const diagnostics = await new Parser().validate(doc as never);
    const errors = diagnostics.filter((d) => d.severity === 0).map((d) => `${d.code} ${d.message} at ${d.path.join('.')}`);
    expect(errors).toEqual([]);
    const { document } = await new Parser().parse(doc as never);
    expect(document?.channels().length).toBe(Object.keys(doc.channels).length);
  });

  it('has a message for every event type, on its context and aggregate channel, with the envelope and the body schema', () => {
    for (const type of Object.keys(eventSchemas)) {
      const [context, aggregate] = type.split('.');
      const channel = doc.channels[`events.${context}.${aggregate}`];
      expect({ type, address: channel?.address }).toEqual({ type, address: `evt.{tenantId}.${context}.${aggregate}.{aggregateId}` });
      expect(channel.messages[type]).toEqual({ $ref: `#/components/messages/${type}` });
      const payload = doc.components.messages[type].payload as Json;
      expect(payload.properties.type).toEqual({ type: 'string', const: type });
      expect(payload.required).toEqual(expect.arrayContaining(['id', 'type', 'tenantId', 'aggregateId', 'actor', 'data']));
      expect(payload.properties.data.type).toBe('object');
    }
  });

  it('has a request/reply operation for every command and query subject', () => {
    const subjects = allRpcs().map((d) => d.subject);
    expect(new Set(subjects).size).toBe(subjects.length);
    for (const subject of subjects) {
      const op = doc.operations[subject] as Json;
      expect({ subject, action: op?.action, channel: op?.channel }).toEqual({ subject, action: 'receive', channel: { $ref: `#/channels/${subject}` } });
      expect(op.reply.channel).toEqual({ $ref: `#/channels/${subject}.reply` });
      expect(doc.channels[subject].address).toBe(subject);
    }
  });
});

describe('the declarations', () => {
  it('name every subject a service serves, and every declared subject is served', () => {
    const root = join(__dirname, '..', '..', '..');
    const served = new Set<string>();
    for (const file of [...sources(join(root, 'services')), ...sources(join(root, 'libs'))]) {
      // Code only: a comment may name the decorator in prose.
      const text = readFileSync(file, 'utf8').split('\n').filter((line) => !/^\s*(\*|\/\/)/.test(line)).join('\n');
      for (const m of text.matchAll(/@MessagePattern\(\s*'([^']+)'/g)) served.add(m[1]!);
      // `@MessagePattern(authRpc.createRole.subject)`: the declaration itself, looked up here.
      // Any other form could serve a subject this check cannot see: refused.
      for (const m of text.matchAll(/@MessagePattern\(([^)]*)\)/g)) {
        expect({ file, pattern: m[0], known: /^\s*'[^']+'\s*$|^\s*\w+\.\w+\.subject\s*$/.test(m[1]!) }).toEqual({ file, pattern: m[0], known: true });
      }
      for (const m of text.matchAll(/@MessagePattern\(\s*(\w+)\.(\w+)\.subject\s*\)/g)) {
        const decl = (contracts as unknown as Record<string, Record<string, { subject?: string }> | undefined>)[m[1]!]?.[m[2]!];
        expect({ file, pattern: m[0], declared: typeof decl?.subject === 'string' }).toEqual({ file, pattern: m[0], declared: true });
        served.add(decl!.subject!);
      }
    }
    expect(served.size).toBeGreaterThan(40);
    const declared = new Set(allRpcs().map((d) => d.subject));
    expect([...served].filter((s) => !declared.has(s))).toEqual([]);
    // The projection operator subjects are served by @keel/projections for every service with projections.
    const operatorSubjects = new Set(Object.values(rpcs).flatMap((service) => Object.values(service).filter((d) => /projection|dead_letter/.test(d.name)).map((d) => d.subject)));
    expect([...declared].filter((s) => !served.has(s) && !operatorSubjects.has(s))).toEqual([]);
  });

  it('split commands from queries by subject', () => {
    for (const service of Object.values(commands)) for (const d of Object.values(service)) expect(d.subject).toMatch(/^cmd\./);
    for (const service of Object.values(queries)) for (const d of Object.values(service)) expect(d.subject).toMatch(/^qry\./);
    expect(allRoutes().length).toBeGreaterThan(60);
  });
});
