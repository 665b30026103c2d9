/**
 * A chain whose process gains a child and loses it again, as a real program does (Redis
 * forks a child for each BGSAVE): `-t PID` pre-dumps one process while it has no children
 * and its tree while it has, so one chain holds directories of both kinds. Each pre-dump
 * must take the other kind as its parent, and verify must read the whole chain.
 */
import test from 'ava';
import path from 'node:path';
import type { PreDumpResult } from '../ts/predump.js';
import {
  assertCliError,
  assertRunningUntraced,
  MiB,
  parseJson,
  runCli,
  signalAll,
  startWorkload,
  tempDir,
} from './helpers.js';

interface TreeJson {
  processes: { pid: number; inParent: string }[];
  droppedFromParent: number[];
}

interface VerifyJson {
  mismatches: number;
  notInChain: number;
  processes: { pid: number; chain: string[]; pagesCompared: number; mismatches: number }[];
}

test('a tree (root and child), then one process (the child exited), then its tree again (a new child): each pre-dump builds on the last, the chain verifies', async (t) => {
  const { w } = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 1, tree: 2 });
  const root = w.pid;
  const [, first] = await w.tree();
  const base = await tempDir(t);
  const preDump = async (n: number) => {
    const r = await runCli([
      'pre-dump',
      '-t',
      String(root),
      '-D',
      path.join(base, String(n)),
      ...(n > 1 ? ['--prev-images-dir', `../${n - 1}`] : []),
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    return r;
  };

  const tree = parseJson<TreeJson>(t, await preDump(1));
  t.deepEqual(tree.processes.map((p) => p.pid).sort(), [root, first!.pid].sort());

  await w.command(`proc ${first!.index} exit`);
  // Until now: "parent images ../1 are corrupt: 2 pagemap images …; expected exactly one".
  const alone = parseJson<PreDumpResult>(t, await preDump(2));
  t.is(alone.pid, root);
  t.is(alone.parent, path.join(base, '1'));
  t.true(alone.pagesSkippedParent > 0, 'pages are left to the tree pre-dump');

  const born = await w.command<{ index: number; pid: number }>('spawn 0');
  // Stopped from here on (job control; the pre-dump freezes and thaws it as it is), so
  // that verify compares the chain with memory that no longer changes.
  signalAll([root, born.pid], 'SIGSTOP');
  t.teardown(() => signalAll([root, born.pid], 'SIGCONT'));
  const again = parseJson<TreeJson>(t, await preDump(3));
  t.is(
    again.processes.find((p) => p.pid === root)!.inParent,
    'yes',
    'the root builds on pre-dump 2',
  );
  t.is(again.processes.find((p) => p.pid === born.pid)!.inParent, 'new');

  // The root's chain 3 (a tree's) → 2 (its own) → 1 (a tree's), read through.
  const v = await runCli(['verify', '-t', String(root), '-D', path.join(base, '3'), '--json']);
  signalAll([root, born.pid], 'SIGCONT');
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<VerifyJson>(t, v);
  t.is(vj.mismatches, 0);
  t.is(vj.notInChain, 0);
  const mine = vj.processes.find((p) => p.pid === root)!;
  t.deepEqual(
    mine.chain,
    ['3', '2', '1'].map((n) => path.join(base, n)),
  );
  t.true(mine.pagesCompared >= (4 * MiB) / 4096);

  // Another process's pre-dump cannot take a tree's images that lack it as its parent.
  const r = await runCli([
    'pre-dump',
    '-t',
    String(born.pid),
    '-D',
    path.join(base, 'other'),
    '--prev-images-dir',
    '../1',
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'EPARENT',
    message: new RegExp(
      `were made for processes ${root}, ${first!.pid}|${first!.pid}, ${root}, not ${born.pid}`,
    ),
  });
  await assertRunningUntraced(t, root);
});
