/**
 * Loads the Rust addon built by `napi build --platform` for this machine.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type * as Binding from './generated/native.js';

export type { PreDumpReport, PreDumpOptions } from './generated/native.js';

/** The package's top directory (dist/.. or ts/..). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function triple(): string {
  const arch = { x64: 'x64', arm64: 'arm64' }[process.arch as string];
  if (process.platform !== 'linux' || arch === undefined) {
    throw new Error(
      `predump runs on Linux x86_64 and aarch64 only, not ${process.platform}/${process.arch}`,
    );
  }
  // musl has no glibc version in the process report.
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } };
  return `linux-${arch}-${report?.header?.glibcVersionRuntime ? 'gnu' : 'musl'}`;
}

const require = createRequire(import.meta.url);

function load(): typeof Binding {
  const file = path.join(packageRoot, `predump.${triple()}.node`);
  try {
    return require(file) as typeof Binding;
  } catch (err) {
    throw new Error(
      `cannot load the predump addon ${file}: ${(err as Error).message}\n` +
        'Build it with `npm install` (or `npm run build`) in the predump directory.',
      { cause: err },
    );
  }
}

export const native: typeof Binding = load();
