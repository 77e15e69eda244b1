import * as path from 'node:path';
import * as ts from 'typescript';

const ROOT = path.resolve(__dirname, '..', '..', '..');

/**
 * Type-checks one source file of the repository with `edit` applied to its text (the file on disk
 * is not touched) and answers the diagnostics' messages for that file: a test can show that a
 * change (a new event type, say) does not compile. Import it as `@keel/testing/type-check`; it is
 * not in the package's index, so tests that do not use it do not load the compiler.
 */
export function typeCheckEdited(file: string, edit: (source: string) => string): string[] {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: ['node'],
    baseUrl: ROOT,
    paths: { '@keel/*': ['libs/*/src'] },
  };
  const host = ts.createCompilerHost(options);
  const original = ts.sys.readFile(file);
  if (original === undefined) throw new Error(`${file} does not exist`);
  const edited = edit(original);
  if (edited === original) throw new Error(`the edit changed nothing in ${file}`);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    path.resolve(name) === file ? ts.createSourceFile(name, edited, version) : getSourceFile(name, version, ...rest);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program, program.getSourceFile(file)).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
}
