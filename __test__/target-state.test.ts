/**
 * The target is sacred: after every pre-dump it runs on, untraced, with the same memory
 * map and open files, and its own checks pass; during the drain it is not held at all.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';

import { pagesFileName } from '../ts/images/index.js';
import { preDump } from '../ts/predump.js';
import {
  assertRunningUntraced,
  checkImagesDir,
  computing,
  mkfifo,
  MiB,
  PAGE,
  parseJson,
  procState,
  reachGate,
  runCli,
  snapshot,
  startCli,
  startWorkload,
  tempDir,
  type Target,
} from './helpers.js';

/** Pre-dumps through the CLI and checks images and target; returns the CLI's JSON. */
async function preDumpAndCheck(
  t: ExecutionContext,
  target: Target,
  dir: string,
): Promise<{ threads: number; pagesWritten: number }> {
  await target.settle();
  const before = await snapshot(target.pid);
  const r = await runCli([
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    dir,
    '--track-mem',
    'none',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<{ threads: number; pagesWritten: number; partial: boolean }>(t, r);
  t.is(j.threads, target.threads);
  t.false(j.partial);
  await assertRunningUntraced(t, target.pid);
  t.deepEqual(await snapshot(target.pid), before, 'same /proc/PID/maps and fds');
  const { dir: d } = await checkImagesDir(t, dir, target.pid, { crit: false });
  const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
  t.is(check.mismatches, 0);
  t.true(check.pagesChecked >= target.w.data.bytes / PAGE);
  t.like(await target.w.selfCheck(), { ok: true, mismatches: 0, computeErrors: 0 });
  return j;
}

/** Compute threads still make progress: their counters move. */
async function assertComputing(t: ExecutionContext, target: Target): Promise<void> {
  t.true(await computing(target.w), 'every compute thread made progress after the pre-dumps');
}

test.serial('five pre-dumps in a row leave a 64 MiB, 2-thread target as it was', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 64 * MiB, threads: 2 });
  const tmp = await tempDir(t);
  for (let i = 0; i < 5; i++) {
    const j = await preDumpAndCheck(t, target, path.join(tmp, `d${i}`));
    t.is(j.threads, 3);
  }
  await assertComputing(t, target);
});

test.serial('a target with 16 compute threads', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 16 });
  t.is((await readdir(`/proc/${target.pid}/task`)).length, 17);
  const tmp = await tempDir(t);
  for (let i = 0; i < 2; i++) {
    const j = await preDumpAndCheck(t, target, path.join(tmp, `d${i}`));
    t.is(j.threads, 17, 'every thread was frozen');
  }
  await assertComputing(t, target);
});

test.serial('through the API: preDump() result and the target afterwards', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 2 });
  const before = await snapshot(target.pid);
  const dir = path.join(await tempDir(t), 'images');
  const progress: [number, number][] = [];
  const r = await preDump({
    pid: target.pid,
    imagesDir: dir,
    mode: 'read',
    trackMem: 'none',
    onProgress: (done, total) => progress.push([done, total]),
  });
  t.is(r.pid, target.pid);
  t.is(r.imagesDir, dir);
  t.is(r.mode, 'read');
  t.is(r.trackBackend, 'none');
  t.false(r.partial);
  t.is(r.threads, 3);
  t.is(r.pagesGone, 0);
  t.is(r.pagesWritten, r.pagesPresent);
  t.is(r.bytesWritten, r.pagesWritten * PAGE);
  // The ticker runs from the start: its total is 0 until the scan is done (a loaded machine
  // can take more than its 100 ms to get there), then the bytes to copy.
  for (const [done, total] of progress) {
    t.true(
      total === 0 ? done === 0 : done <= total && total === r.bytesWritten,
      `${done}/${total}`,
    );
  }
  const { dir: d, presentPages } = await checkImagesDir(t, dir, target.pid);
  t.is(presentPages, r.pagesWritten);
  t.is(d.entries.length, r.pagemapEntries);
  const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
  t.is(check.mismatches, 0);
  await assertRunningUntraced(t, target.pid);
  t.deepEqual(await snapshot(target.pid), before);
  t.true((await target.w.selfCheck()).ok);
});

test.serial(
  'the default (uffd-wp tracking, freeze-free) leaves exactly a userfaultfd and its marker; untrack takes them',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 2 });
    const before = await snapshot(target.pid);
    const dir = path.join(await tempDir(t), 'images');
    const r = await preDump({ pid: target.pid, imagesDir: dir });
    t.is(r.trackBackend, 'uffd-wp', 'this kernel has uffd-wp and no soft-dirty');
    t.is(r.mode, 'freeze-free');
    t.true(r.stoppedWindowMs > 0, 'the first run stops the target once, to make the uffd');
    await assertRunningUntraced(t, target.pid);
    const during = await snapshot(target.pid);
    const added = Object.entries(during.fds).filter(([fd]) => !(fd in before.fds));
    t.is(added.length, 2, JSON.stringify(added));
    t.deepEqual(added.map(([, link]) => link.replace(/\d+/g, 'N')).sort(), [
      '/memfd:predump-uffd pid=N fd=N ino=N (deleted)',
      'anon_inode:[userfaultfd]',
    ]);
    for (const [fd] of added)
      t.true(Number(fd) >= 56, `fd ${fd} is high, out of the program's way`);
    for (const [fd, link] of Object.entries(before.fds)) t.is(during.fds[fd], link);
    const again = await preDump({
      pid: target.pid,
      imagesDir: path.join(path.dirname(dir), 'again'),
      prevImagesDir: dir,
    });
    t.is(again.stoppedWindowMs, 0, 'later runs never stop it');
    t.deepEqual((await snapshot(target.pid)).fds, during.fds, 'nothing more is left by later runs');
    const u = await runCli(['untrack', '-t', String(target.pid), '--json']);
    t.is(u.code, 0, u.stderr);
    t.deepEqual((await snapshot(target.pid)).fds, before.fds);
    t.true((await target.w.selfCheck()).ok);
  },
);

test.serial(
  'a job-stopped target stays stopped, untraced, and runs on after SIGCONT',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 2 });
    const tids = await readdir(`/proc/${target.pid}/task`);
    process.kill(target.pid, 'SIGSTOP');
    let continued = false;
    t.teardown(() => {
      if (!continued) process.kill(target.pid, 'SIGCONT');
    });
    const allStopped = async (): Promise<boolean> => {
      for (const tid of tids)
        if ((await procState(target.pid, Number(tid)))?.state !== 'T') return false;
      return true;
    };
    let stopped = false;
    for (let i = 0; i < 500 && !(stopped = await allStopped()); i++) {
      await new Promise((resolve) => setTimeout(resolve, 10)); // bounded re-read of /proc
    }
    t.true(stopped, 'every thread is in group stop');

    const dir = path.join(await tempDir(t), 'images');
    const r = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      dir,
      '--track-mem',
      'none',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    for (const tid of tids) {
      t.deepEqual(await procState(target.pid, Number(tid)), { state: 'T', tracerPid: 0 });
    }
    const { dir: d } = await checkImagesDir(t, dir, target.pid, { crit: false });

    process.kill(target.pid, 'SIGCONT');
    continued = true;
    await assertRunningUntraced(t, target.pid);
    const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
    t.is(check.mismatches, 0);
    t.true((await target.w.selfCheck()).ok);
    await assertComputing(t, target);
  },
);

test.serial(
  'during the drain the target runs untraced; a second pre-dump meanwhile works',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 2 });
    const tmp = await tempDir(t);
    const gate = path.join(tmp, 'gate');
    await mkfifo(gate);
    const first = path.join(tmp, 'first');
    const cli = startCli(
      ['pre-dump', '-t', String(target.pid), '-D', first, '--track-mem', 'none', '--json'],
      {
        PREDUMP_TEST_DRAIN_GATE: gate,
      },
    );
    t.teardown(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    const fh = await reachGate(gate, cli);
    try {
      // Read mode: the target was thawed before the copy started.
      await assertRunningUntraced(t, target.pid);
      t.true((await target.w.selfCheck()).ok, 'the target answers while its pages are copied');
      // Rewrite pages that the first pre-dump has not copied yet is allowed, but would make
      // its content check ambiguous: a second, complete pre-dump runs instead.
      await preDumpAndCheck(t, target, path.join(tmp, 'second'));
      await fh.write(Buffer.from('x'));
    } finally {
      await fh.close();
    }
    const r = await cli.done;
    t.is(r.code, 0, r.stderr);
    t.false(parseJson<{ partial: boolean }>(t, r).partial);
    const { dir: d } = await checkImagesDir(t, first, target.pid);
    const check = await target.w.checkImage(path.join(first, pagesFileName(1)), d.entries);
    t.is(check.mismatches, 0);
    await assertRunningUntraced(t, target.pid);
    t.true((await target.w.selfCheck()).ok);
  },
);

for (const [signal, status] of [
  ['SIGTERM', 143],
  ['SIGINT', 130],
] as const) {
  test.serial(
    `${signal} to the CLI in the middle of the drain: images removed, target runs on`,
    async (t) => {
      const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 2 });
      const before = await snapshot(target.pid);
      const tmp = await tempDir(t);
      const gate = path.join(tmp, 'gate');
      await mkfifo(gate);
      const dir = path.join(tmp, 'images');
      const cli = startCli(
        ['pre-dump', '-t', String(target.pid), '-D', dir, '--track-mem', 'none', '--json'],
        {
          PREDUMP_TEST_DRAIN_GATE: gate,
        },
      );
      t.teardown(() => {
        if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
      });
      const fh = await reachGate(gate, cli);
      let r;
      try {
        cli.child.kill(signal);
        r = await cli.done;
      } finally {
        await fh.close();
      }
      t.is(r.code, status, r.stderr);
      t.regex(r.stderr, new RegExp(`interrupted \\(${signal}\\)`));
      t.regex(r.stderr, /the target was left running; the incomplete images were removed/);
      const j = parseJson<{ ok: boolean; error: { code: string } }>(t, r);
      t.false(j.ok);
      t.is(j.error.code, 'EINTERRUPTED');
      t.false(existsSync(dir), 'the directory the tool made is gone');
      await assertRunningUntraced(t, target.pid);
      t.deepEqual(await snapshot(target.pid), before);
      t.true((await target.w.selfCheck()).ok);
    },
  );
}
