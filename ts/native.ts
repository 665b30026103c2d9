/**
 * Finds and loads the Rust addon and the workload program for this machine.
 *
 * Two places can hold them:
 * - a checkout built from source (`npm install` in a clone): `predump.<triple>.node`
 *   at the package's top and `target/release/predump-workload`;
 * - an installed release: the platform package `predump-<triple>` (one of the
 *   main package's optionalDependencies, of which npm installs only the one whose
 *   `os`, `cpu` and `libc` match), holding both files.
 * A build in the checkout wins, so a developer's fresh build is what runs.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { PredumpError } from './errors.js';
import type * as Binding from './generated/native.js';

export type { PreDumpReport, PreDumpOptions } from './generated/native.js';

/** The package's top directory (dist/.. or ts/..). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The platforms prebuilt packages exist for, as napi-rs names them. */
export const PLATFORMS = ['linux-x64-gnu', 'linux-arm64-gnu', 'linux-x64-musl', 'linux-arm64-musl'];

/**
 * musl or glibc. As napi-rs's own loaders do, ldd says first: a musl system's ldd names
 * musl, which one read of a small file tells; the process report (a glibc Node reports the
 * glibc it runs on, a musl one none) costs a sixth of the CLI's start-up and is asked
 * only where there is no ldd.
 */
function libc(): 'gnu' | 'musl' {
  try {
    return readFileSync('/usr/bin/ldd', 'latin1').includes('musl') ? 'musl' : 'gnu';
  } catch {
    // no ldd: ask the process report
  }
  // The report's network part (a walk of the open sockets) is not needed here;
  // excludeNetwork exists since Node 20.13 (@types/node 20 does not know it yet).
  const report_ = process.report as
    (NodeJS.ProcessReport & { excludeNetwork?: boolean }) | undefined;
  if (report_) report_.excludeNetwork = true;
  const report = report_?.getReport() as { header?: { glibcVersionRuntime?: string } };
  return report?.header?.glibcVersionRuntime ? 'gnu' : 'musl';
}

/** This machine's platform, e.g. `linux-arm64-musl`; EPLATFORM where none is built. */
export function platform(): string {
  const arch = { x64: 'x64', arm64: 'arm64' }[process.arch as string];
  if (process.platform !== 'linux' || arch === undefined) {
    throw new PredumpError(
      'EPLATFORM',
      `predump runs on Linux only, on x86_64 or aarch64 (glibc or musl); this is ` +
        `${process.platform}/${process.arch}. It pre-dumps Linux processes with ptrace, ` +
        'process_vm_readv and /proc: there is nothing to run elsewhere.',
    );
  }
  return `linux-${arch}-${libc()}`;
}

export interface NativeFiles {
  /** The addon (`*.node`). */
  addon: string;
  /** The workload program of `predump demo`, the benchmarks and the tests. */
  workload: string;
  /** Where they come from: a build in this checkout, or a platform package. */
  from: 'checkout' | 'package';
}

const require = createRequire(import.meta.url);

/** Where this machine's addon and workload are (without loading anything). */
export function nativeFiles(): NativeFiles {
  const triple = platform();
  const built = path.join(packageRoot, `predump.${triple}.node`);
  if (existsSync(built)) {
    return {
      addon: built,
      workload: path.join(packageRoot, 'target', 'release', 'predump-workload'),
      from: 'checkout',
    };
  }
  const name = `predump-${triple}`;
  let dir: string;
  try {
    dir = path.dirname(require.resolve(`${name}/package.json`));
  } catch (err) {
    throw new PredumpError(
      'ENOADDON',
      `predump's binaries for this machine (${triple}) are missing: the package ${name} is ` +
        'not installed. npm installs it with predump, as the optional dependency that matches ' +
        'this machine; it is left out by --omit=optional (or --no-optional), and by a ' +
        'node_modules or lockfile made on another platform: run `npm install` here again ' +
        `(or \`npm install ${name}\`). In a clone of predump's repository, \`npm install\` ` +
        'builds them from source instead (it needs cargo and a C linker).',
      { cause: err },
    );
  }
  return {
    addon: path.join(dir, `predump.${triple}.node`),
    workload: path.join(dir, 'predump-workload'),
    from: 'package',
  };
}

function load(): typeof Binding {
  const { addon, from } = nativeFiles();
  try {
    return require(addon) as typeof Binding;
  } catch (err) {
    const remedy =
      from === 'checkout'
        ? 'Rebuild it with `npm run build` in the predump directory.'
        : 'Reinstall predump (`npm install`); if it still fails, this system may be older ' +
          'than the binaries need (glibc 2.17 or musl 1.2, Linux).';
    throw new PredumpError(
      'ENOADDON',
      `cannot load the predump addon ${addon}: ${(err as Error).message}\n${remedy}`,
      { cause: err },
    );
  }
}

export const native: typeof Binding = load();
