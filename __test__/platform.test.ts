/**
 * The loader of the native binaries: what a machine without them is told. (The
 * prebuilt packages themselves are installed and run by .ci/installed and, on
 * arm64, by .ci/aarch64.)
 */
import test from 'ava';
import { cp, mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';

import { platform } from '../ts/native.js';
import { assertCliError, NODE, ROOT, startProcess, tempDir } from './helpers.js';

test('another architecture is told that predump runs on x86_64 and aarch64 Linux only', async (t) => {
  // Node as if on 32-bit x86: the loader decides from process.arch.
  const pretend = 'data:text/javascript,Object.defineProperty(process,"arch",{value:"ia32"})';
  const r = await startProcess(NODE, [
    `--import=${pretend}`,
    path.join(ROOT, 'bin', 'predump.js'),
    'check',
    '--json',
  ]).done;
  assertCliError(t, r, {
    exit: 1,
    code: 'EPLATFORM',
    message: /runs on Linux only, on x86_64 or aarch64 \(glibc or musl\); this is linux\/ia32/,
  });
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
});

test('an install without its platform package says which package is missing and why', async (t) => {
  // The main package as npm installs it (bin, dist, package.json, its
  // dependencies), with neither a build of the checkout nor predump-linux-*.
  const dir = await tempDir(t);
  const pkg = path.join(dir, 'node_modules', 'predump');
  await mkdir(pkg, { recursive: true });
  for (const f of ['bin', 'dist', 'package.json']) {
    await cp(path.join(ROOT, f), path.join(pkg, f), { recursive: true });
  }
  for (const dep of ['yargs', 'protobufjs']) {
    await symlink(path.join(ROOT, 'node_modules', dep), path.join(dir, 'node_modules', dep));
  }
  const r = await startProcess(
    NODE,
    [path.join(pkg, 'bin', 'predump.js'), 'check', '--json'],
    {},
    dir,
  ).done;
  const triple = platform();
  const j = assertCliError(t, r, {
    exit: 1,
    code: 'ENOADDON',
    message: new RegExp(`the package predump-${triple} is not installed`),
  });
  t.regex(j.error.message, /--omit=optional/);
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
});
