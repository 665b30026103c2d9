/**
 * End to end through the CLI: `predump pre-dump` of the bundled workload, the images it
 * leaves (checked page by page, and by crit), `predump show`, and `predump demo`.
 */
import test from 'ava';
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { pagesFileName } from '../ts/images/index.js';
import type { ImagesSummary } from '../ts/show.js';
import {
  assertRunningUntraced,
  checkImagesDir,
  MiB,
  PAGE,
  ROOT,
  parseJson,
  runCli,
  snapshot,
  startWorkload,
  tempDir,
  type PreDumpJson,
} from './helpers.js';

test.serial(
  'pre-dump of a 128 MiB workload through the CLI: complete, correct, CRIU-readable images',
  async (t) => {
    const size = 128 * MiB;
    const target = await startWorkload(t, { sizeBytes: size, threads: 2 });
    const before = await snapshot(target.pid);
    const tmp = await tempDir(t);
    const dir = path.join(tmp, 'images');

    const r = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      dir,
      '--pre-dump-mode',
      'read',
      '--track-mem',
      'none',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    // With --json, stderr carries only warnings and errors: no summary, no notes.
    t.is(r.stderr, '');
    const j = parseJson<PreDumpJson>(t, r);
    t.is(j.version, 1);
    t.is(j.command, 'pre-dump');
    t.deepEqual(Object.keys(j).slice(0, 3), ['version', 'command', 'ok']);
    t.is(j.ok, true);
    t.is(j.pid, target.pid);
    t.is(j.imagesDir, dir);
    t.is(j.mode, 'read');
    t.false(j.partial);
    t.is(j.threads, 3, 'the command thread and 2 compute threads');
    t.regex(j.scanMethod, /^(PAGEMAP_SCAN|pagemap)$/);
    t.is(j.pagesGone, 0);
    t.is(j.pagesWritten, j.pagesPresent);
    t.true(j.pagesScanned >= j.pagesPresent);
    t.is(j.bytesWritten, j.pagesWritten * PAGE);
    for (const k of ['freezingMs', 'frozenMs', 'stoppedWindowMs', 'scanMs', 'drainMs', 'totalMs']) {
      const v = j[k as keyof PreDumpJson] as number;
      t.true(Number.isFinite(v) && v >= 0, `${k} = ${v}`);
    }

    // The directory the tool made is 0700; the files are 0600 (checked in checkImagesDir).
    t.is((await stat(dir)).mode & 0o777, 0o700);
    const { dir: d, presentPages } = await checkImagesDir(t, dir, target.pid);
    t.is(presentPages, j.pagesWritten, '--json pagesWritten = pages in the image');
    t.is(d.entries.length, j.pagemapEntries);
    t.is(d.stats?.pagesScanned, j.pagesScanned);

    // Every page of the workload's pattern memory holds what it must.
    const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
    t.is(
      check.mismatches,
      0,
      `first wrong pages: ${check.firstMismatches.map((a) => a.toString(16))}`,
    );
    t.is(check.trailingBytes, 0);
    t.true(check.pagesChecked >= size / PAGE, `${check.pagesChecked} pages checked`);

    // predump show agrees with the images.
    const s = await runCli(['show', dir, '--json']);
    t.is(s.code, 0, s.stderr);
    const shown = parseJson<ImagesSummary>(t, s);
    t.true(shown.complete);
    t.is(shown.kind, 'pre-dump');
    t.is(shown.mode, 'read');
    t.is(shown.tracking, null, 'no predump record without tracking');
    t.is(shown.pid, target.pid);
    t.is(shown.pagesPresent, presentPages);
    t.is(shown.pagesInParent, 0);
    t.is(shown.pagesFileBytes, presentPages * PAGE);
    t.is(shown.stats?.pagesWritten, j.pagesWritten);
    t.deepEqual(
      shown.entries.map((e) => [e.vaddr, e.nrPages, e.flags, e.flagNames.join('|')]),
      d.entries.map((e) => [e.vaddr, e.nrPages, e.flags, 'PE_PRESENT']),
    );
    const human = await runCli(['show', dir]);
    t.is(human.code, 0, human.stderr);
    t.regex(human.stdout, /: complete pre-dump/);
    t.regex(
      human.stdout,
      /\n {2}made by {8}a pre-dump in read mode, without predump's record \(criu pre-dump, or predump without dirty tracking\)\n/,
    );
    t.regex(human.stdout, new RegExp(`pages present\\s+${presentPages}\\b`));

    // The target runs on as before.
    await assertRunningUntraced(t, target.pid);
    t.deepEqual(await snapshot(target.pid), before);
    t.like(await target.w.selfCheck(), { ok: true, mismatches: 0, computeErrors: 0 });
  },
);

test.serial(
  'pre-dump into an existing empty directory keeps its mode and other files',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
    const dir = await tempDir(t);
    await chmod(dir, 0o755);
    await writeFile(path.join(dir, 'notes.txt'), 'not an image\n');

    const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', dir]);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, '', 'without --json nothing goes to stdout');
    t.regex(r.stderr, /pre-dumped pid \d+ \(2 threads\)/);
    t.is((await stat(dir)).mode & 0o777, 0o755);
    t.is(await readFile(path.join(dir, 'notes.txt'), 'utf8'), 'not an image\n');
    const { dir: d } = await checkImagesDir(t, dir, target.pid);
    const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
    t.is(check.mismatches, 0);
    t.true(check.pagesChecked >= (16 * MiB) / PAGE);
    await assertRunningUntraced(t, target.pid);
    t.true((await target.w.selfCheck()).ok);
  },
);

test.serial(
  'a second pre-dump after the target rewrote pages holds the new contents',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 2 });
    const tmp = await tempDir(t);
    for (let round = 1; round <= 3; round++) {
      const dirtied = await target.w.dirty(200, round);
      t.true(dirtied.dirtied > 0);
      const dir = path.join(tmp, `round-${round}`);
      const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', dir, '--json']);
      t.is(r.code, 0, r.stderr);
      t.is(parseJson<PreDumpJson>(t, r).pagesGone, 0);
      const { dir: d } = await checkImagesDir(t, dir, target.pid);
      const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
      t.is(check.mismatches, 0, `round ${round}`);
      t.true(check.pagesChecked >= (32 * MiB) / PAGE);
      await assertRunningUntraced(t, target.pid);
    }
    t.true((await target.w.selfCheck()).ok);
  },
);

test.serial('a relative images directory is taken from the working directory', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 1 });
  const cwd = await tempDir(t);
  const r = await runCli(
    ['pre-dump', '-t', String(target.pid), '-D', 'rel/images', '--json'],
    {},
    cwd,
  );
  t.is(r.code, 1, 'the parent rel/ does not exist');
  t.is(parseJson<{ error: { code: string } }>(t, r).error.code, 'EDIR');
  const ok = await runCli(
    ['pre-dump', '-t', String(target.pid), '-D', 'images', '--json'],
    {},
    cwd,
  );
  t.is(ok.code, 0, ok.stderr);
  const j = parseJson<PreDumpJson>(t, ok);
  t.is(j.imagesDir, path.join(cwd, 'images'), 'reported as an absolute path');
  await checkImagesDir(t, path.join(cwd, 'images'), target.pid, { crit: false });
  await assertRunningUntraced(t, target.pid);
});

test.serial('predump demo runs with no arguments', async (t) => {
  const r = await runCli(['demo']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /demo ok/);
  t.regex(r.stderr, /0 wrong/);
  // Its mode (auto: freeze-free where uffd-wp tracks), and, in freeze-free mode, why the
  // scan can outlast the stop: it ran while the workload did.
  const m = /\n {2}mode {5}(\S+) \(auto[^)]*\): /.exec(r.stderr);
  t.truthy(m, r.stderr);
  if (m?.[1] === 'freeze-free') {
    t.regex(r.stderr, /\(auto: uffd-wp tracking is in use\): the target ran throughout\n/);
    t.regex(
      r.stderr,
      /\n {2}frozen {3}[\d.]+ ms \(once, to set up the tracking\); scan [\d.]+ ms with \S+, while it ran\n/,
    );
  } else {
    t.is(m?.[1], 'read');
    t.regex(
      r.stderr,
      /\n {2}frozen {3}[\d.]+ ms \(freezing [\d.]+ ms, scan [\d.]+ ms with \S+\)\n/,
    );
  }
  t.regex(r.stderr, DEMO_COPY_LINE);
});

/** The demo's copy line: how long, how fast, when (its mode's), then the fsync. */
const DEMO_COPY_LINE =
  /\n {2}copy {5}[\d.]+ m?s, \d+ MB\/s, (after the thaw|while the target ran); fsync [\d.]+ m?s; total [\d.]+ m?s\n/;

// Issue 16, item 7: the README's sample is what the demo prints now, in the mode it names.
test('the README shows the demo as it prints now', async (t) => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('`npx predump demo` prints');
  t.true(at >= 0, 'the README has a sample of the demo');
  const block = /```\n([\s\S]*?)```/.exec(readme.slice(at))?.[1] ?? '';
  const sample = `\n${block}`;
  t.regex(
    sample,
    /\n {2}mode {5}freeze-free \(auto: uffd-wp tracking is in use\): the target ran throughout\n/,
  );
  t.regex(
    sample,
    /\n {2}frozen {3}[\d.]+ ms \(once, to set up the tracking\); scan [\d.]+ ms with \S+, while it ran\n/,
  );
  t.regex(sample, DEMO_COPY_LINE);
  t.regex(sample, /, while the target ran; /);
  t.regex(sample, /\ndemo ok\n/);
  // The text before it names the same mode.
  t.regex(readme.slice(at, readme.indexOf('```', at)), /chooses the freeze-free mode/);
});

test.serial('predump demo --json prints one JSON object', async (t) => {
  const tmp = await tempDir(t);
  const dir = path.join(tmp, 'kept');
  await mkdir(tmp, { recursive: true });
  const r = await runCli(['demo', '--size', '32M', '--threads', '3', '-D', dir, '--json']);
  t.is(r.code, 0, r.stderr);
  // With --json, stderr carries only warnings and errors: none here.
  t.is(r.stderr, '');
  // The pre-dump's fields as `pre-dump --json` prints them, beside the demo's checks.
  const j = parseJson<
    PreDumpJson & {
      check: { mismatches: number; pagesChecked: number };
      selfCheck: { ok: boolean };
    }
  >(t, r);
  t.is(j.version, 1);
  t.is(j.command, 'demo');
  t.true(j.ok);
  t.is(j.threads, 4);
  // auto: freeze-free where uffd-wp tracks (no soft-dirty), else read.
  t.is(j.mode, j.trackBackend === 'uffd-wp' ? 'freeze-free' : 'read');
  t.is(j.check.mismatches, 0);
  t.true(j.check.pagesChecked >= (32 * MiB) / PAGE);
  t.true(j.selfCheck.ok);
  // -D keeps the images: a complete set.
  const s = parseJson<ImagesSummary>(t, await runCli(['show', dir, '--json']));
  t.true(s.complete);
  t.is(s.pagesPresent, j.pagesWritten);
});

test.serial('predump show: missing, incomplete and corrupt directories', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 1 });
  const tmp = await tempDir(t);
  const missing = await runCli(['show', path.join(tmp, 'nothing'), '--json']);
  t.is(missing.code, 1);
  t.is(parseJson<{ error: { code: string } }>(t, missing).error.code, 'EDIR');
  t.regex(missing.stderr, /no such directory/);

  const dir = path.join(tmp, 'images');
  t.is((await runCli(['pre-dump', '-t', String(target.pid), '-D', dir])).code, 0);
  await rm(path.join(dir, 'inventory.img'));
  const incomplete = await runCli(['show', dir, '--json']);
  t.is(incomplete.code, 0, incomplete.stderr);
  const s = parseJson<ImagesSummary>(t, incomplete);
  t.false(s.complete);
  t.is(s.pid, target.pid);
  t.regex((await runCli(['show', dir])).stdout, /INCOMPLETE \(no inventory\.img\)/);

  await writeFile(path.join(dir, 'inventory.img'), 'junk');
  const corrupt = await runCli(['show', dir, '--json']);
  t.is(corrupt.code, 1);
  t.is(parseJson<{ error: { code: string } }>(t, corrupt).error.code, 'EIMAGE');
  t.regex(corrupt.stderr, /inventory\.img: not a CRIU image/);
});
