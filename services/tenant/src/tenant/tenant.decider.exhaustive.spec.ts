import * as path from 'node:path';
import * as ts from 'typescript';

const root = path.resolve(__dirname, '../../../..');
const deciderFile = path.join(__dirname, 'tenant.decider.ts');

/** Type-checks tenant.decider.ts with `edit` applied to its text: the diagnostics' messages. */
function typeCheck(edit: (source: string) => string): string[] {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: ['node'],
    baseUrl: root,
    paths: { '@keel/*': ['libs/*/src'] },
  };
  const host = ts.createCompilerHost(options);
  const original = ts.sys.readFile(deciderFile)!;
  const edited = edit(original);
  expect(edited).not.toBe(original); // the edit applied
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    path.resolve(name) === deciderFile ? ts.createSourceFile(name, edited, version) : getSourceFile(name, version, ...rest);
  const program = ts.createProgram([deciderFile], options, host);
  return ts
    .getPreEmitDiagnostics(program, program.getSourceFile(deciderFile))
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
}

describe('tenant decider exhaustiveness', () => {
  it('compiles as it is', () => {
    expect(typeCheck((s) => `${s}\n`)).toEqual([]);
  }, 120_000);

  it('a new event type does not compile until evolve handles it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace('type Event = TenantEvent & { occurredAt?: string };', "type Event = (TenantEvent | { type: 'tenant.tenant.brand_new'; data: Record<string, never> }) & { occurredAt?: string };"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);

  it('a new command does not compile until decide decides it', () => {
    const diagnostics = typeCheck((s) =>
      s.replace("  | { type: 'close'; data: { reason?: string } };", "  | { type: 'close'; data: { reason?: string } }\n  | { type: 'brand_new'; data: Record<string, never> };"),
    );
    expect(diagnostics.join('\n')).toMatch(/brand_new.*not assignable to type 'never'/s);
  }, 120_000);
});
