/**
 * `pre-dump -t ROOT --pre-dump-mode freeze-free` on a process tree: each process pre-dumped
 * as one process's freeze-free pre-dump is, while it runs. The proof that a run after the
 * first stops no process is the kernel's: every process of the tree is held by another
 * tracer (PTRACE_SEIZE, which stops nothing) during it, so any ptrace attach of predump's
 * would fail (ETRACED); the run succeeds and says it stopped nothing. Then the chain is closed
 * by `dump -t` (the whole tree frozen, the tracking read and ended) and verified, and nothing
 * of predump is left. The refusals: what freeze-free on a tree cannot do, with message and
 * exit code. (A kernel without uffd-wp: .ci/vm-scenarios/tree-dump-soft-dirty.sh on 6.1.)
 */
import test from 'ava';
import { constants } from 'node:fs';
import { open, readdir, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import type { PreDumpResult } from '../ts/predump.js';
import {
  assertCliError,
  assertRunningUntraced,
  type CliResult,
  computing,
  holdAll,
  killAndWaitExit,
  leftoverDiff,
  MiB,
  mkfifo,
  parseJson,
  reachGate,
  release,
  runCli,
  signalAll,
  snapshot,
  startCli,
  startTree,
  tempDir,
} from './helpers.js';

/** The CLI's arguments for a freeze-free pre-dump of the tree of `root` into `dir` (on `prev`). */
function freeFreeArgs(root: number, dir: string, prev?: string): string[] {
  const args = ['pre-dump', '-t', String(root), '-D', dir, '--pre-dump-mode', 'freeze-free'];
  if (prev) args.push('--prev-images-dir', prev);
  return [...args, '--json'];
}

/** A freeze-free pre-dump of the tree of `root` into `dir` (on `prev`), run to its end. */
function preDumpFreeFree(root: number, dir: string, prev?: string): Promise<CliResult> {
  return runCli(freeFreeArgs(root, dir, prev));
}

test('freeze-free on a tree: after the first run no process is stopped (another tracer holds them all), dump -t closes the chain, verify 0, nothing left', async (t) => {
  const { w, procs, pids } = await startTree(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));

  // The first run makes each process's tracking: each is stopped once, alone, for it.
  const first = await preDumpFreeFree(w.pid, path.join(base, '1'));
  t.is(first.code, 0, first.stderr);
  const j1 = parseJson<PreDumpResult>(t, first);
  t.like(j1, { mode: 'freeze-free', requestedMode: 'freeze-free', trackBackend: 'uffd-wp' });
  t.is(j1.processes.length, 4);
  t.true(j1.stoppedWindowMs > 0, 'the first run stops each process once to make its tracking');

  // Writes in two processes, then a second run while every process is held by another
  // tracer: predump cannot stop any of them (ptrace would fail), and does not need to.
  await w.command('proc 3 dirty 100 21');
  await w.command('proc 0 dirty 50 22');
  const holder = await holdAll(t, pids);
  const second = await preDumpFreeFree(w.pid, path.join(base, '2'), '../1');
  t.is(second.code, 0, second.stderr);
  const j2 = parseJson<PreDumpResult>(t, second);
  t.like(j2, { mode: 'freeze-free', trackBackend: 'uffd-wp', stoppedWindowMs: 0 });
  t.is(j2.freezingMs, 0);
  t.is(j2.trackNote, null, 'every process trusted its parent');
  for (const p of procs) {
    const a = j1.processes.find((x) => x.pid === p.pid)!.pagesWritten;
    const b = j2.processes.find((x) => x.pid === p.pid)!.pagesWritten;
    t.log(`process ${p.pid}: ${a} pages, then ${b}`);
    t.true(b < a / 3, `process ${p.pid}: ${b} pages copied again of ${a}`);
  }
  const wrote = j2.processes.find((x) => x.pid === procs[3]!.pid)!.pagesWritten;
  t.true(wrote >= 102, `process 3 wrote ${wrote} pages (102 dirtied)`);
  t.true(j2.pagesSkippedParent > 0);
  t.true(await computing(w), 'the tree computed on while held');
  await release(holder);

  // A third, on the second; then the tree stopped and the chain closed by the tree's dump.
  await w.command('proc 2 dirty 100 23');
  // Its summary, as a user reads it.
  const third = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '3'),
    '--prev-images-dir',
    '../2',
    '--pre-dump-mode',
    'freeze-free',
  ]);
  t.is(third.code, 0, third.stderr);
  t.log(third.stderr);
  t.regex(
    third.stderr,
    /\n {2}mode {5}freeze-free: the tree ran throughout, each process pre-dumped in turn while it ran\n/,
  );
  t.regex(third.stderr, /\n {2}frozen {3}never; scan .* while the processes ran\n/);
  await w.command('proc 1 dirty 100 24');
  signalAll(pids, 'SIGSTOP'); // nothing changes after this: verify is exact
  const d = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '4'),
    '--prev-images-dir',
    '../3',
    '--leave-stopped',
    '--json',
  ]);
  t.is(d.code, 0, d.stderr);
  const jd = parseJson<PreDumpResult & { copiedWhileFrozen: boolean }>(t, d);
  t.true(jd.copiedWhileFrozen);
  t.is(jd.trackBackend, 'uffd-wp', "the chain's tracking was read");
  t.true(jd.pagesSkippedParent > 0, 'the dump leaves unchanged pages to the chain');
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '4'), '--json']);
  t.is(v.code, 0, v.stderr);
  t.like(parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v), {
    ok: true,
    mismatches: 0,
    missing: 0,
  });
  signalAll(pids, 'SIGCONT');
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left`);
  }
  t.true((await w.selfCheck()).ok);
});

test('freeze-free on a tree: a process that exits during its copy makes a partial pre-dump, exit 3, naming it', async (t) => {
  const { w, procs, pids } = await startTree(t);
  const tmp = await tempDir(t);
  const first = await preDumpFreeFree(w.pid, path.join(tmp, '1'));
  t.is(first.code, 0, first.stderr);
  const j1 = parseJson<PreDumpResult>(t, first);
  t.teardown(() => runCli(['untrack', '-t', String(w.pid)]));
  // The processes are copied one after the other, in tree order (as the first run did them,
  // with the same pages ids), each waiting at the gate after its first buffer: the victim
  // (a leaf) is killed while its own copy waits there. Without a parent every page is copied
  // again: more than the first buffer's worth.
  const victim = procs[3]!.pid;
  const order = j1.processes.map((p) => p.pid);
  const victimFile = path.join(
    tmp,
    '2',
    `pages-${j1.processes.find((p) => p.pid === victim)!.pagesId}.img`,
  );
  const gate = path.join(tmp, 'gate');
  await mkfifo(gate);
  const cli = startCli(freeFreeArgs(w.pid, path.join(tmp, '2')), {
    PREDUMP_TEST_DRAIN_GATE: gate,
  });
  const fh = await reachGate(gate, cli);
  // A reader of our own that never reads: the bytes wait in the FIFO between two copies
  // (each opens the gate afresh), and a write finds a reader whenever it comes.
  const keep = await open(gate, constants.O_RDONLY | constants.O_NONBLOCK);
  await fh.write(Buffer.from('x'.repeat(order.indexOf(victim))));
  // Its first buffer (4 MiB) written: its copy waits at the gate.
  const size = async () => (await stat(victimFile).catch(() => undefined))?.size ?? 0;
  for (let i = 0; i < 4000 && (await size()) < 4 * MiB; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  t.true((await size()) > 0, "the victim's copy has begun");
  // Exited before the gate opens: the rest of its copy (a few dozen pages) would otherwise
  // race its SIGKILL, and could be read whole before it takes effect (exit 0, seen at load 12).
  await killAndWaitExit(victim);
  await fh.write(Buffer.from('x'.repeat(order.length)));
  const r = await cli.done;
  await fh.close();
  await keep.close();
  t.is(r.code, 3, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.true(j.partial);
  t.deepEqual(
    j.processes.filter((p) => p.partial).map((p) => p.pid),
    [victim],
  );
  t.regex(r.stderr, new RegExp(`process ${victim} exited during the copy`));
  for (const pid of pids.filter((p) => p !== victim)) await assertRunningUntraced(t, pid);
});

test('freeze-free on a tree: what it cannot do is refused by name, before anything is touched', async (t) => {
  const { w, pids } = await startTree(t);
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const ff = ['--pre-dump-mode', 'freeze-free'];
  const cases: [string[], RegExp][] = [
    [
      [...ff, '--track-mem', 'soft-dirty'],
      /the freeze-free mode needs uffd-wp dirty tracking, not 'soft-dirty'/,
    ],
    [
      [...ff, '--track-mem', 'none'],
      /the freeze-free mode needs uffd-wp dirty tracking, not 'none'/,
    ],
  ];
  for (const [i, [extra, message]] of cases.entries()) {
    const dir = path.join(base, `img-${i}`);
    const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir, '--json', ...extra]);
    assertCliError(t, r, { exit: 1, code: 'EINVAL', message });
    t.false((await readdir(base)).includes(`img-${i}`), 'no directory left behind');
  }
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump in it`);
  }
});

test('freeze-free on a tree: a process forked since is new (copied whole), one that exited is dropped; dump -t on the chain verifies and leaves nothing, inherited fds included', async (t) => {
  const { w, procs, pids } = await startTree(t);
  const base = await tempDir(t);
  const before = new Map(
    await Promise.all(pids.map(async (pid) => [pid, await snapshot(pid)] as const)),
  );
  const first = await preDumpFreeFree(w.pid, path.join(base, '1'));
  t.is(first.code, 0, first.stderr);
  // Process 1 forks a child while it holds its tracking (the child inherits its uffd and
  // marker fds by fork); process 2, a leaf, exits.
  const leaf = procs[2]!;
  await w.command('proc 2 exit');
  const born = await w.command<{ index: number; pid: number }>('spawn 1');
  const all = [...pids.filter((p) => p !== leaf.pid), born.pid];
  t.teardown(() => signalAll(all, 'SIGCONT'));
  t.true(
    (await uffdFds(born.pid)).some((l) => l.includes(`pid=${procs[1]!.pid} `)),
    "the child holds copies of its parent's uffd and marker",
  );
  const second = await preDumpFreeFree(w.pid, path.join(base, '2'), '../1');
  t.is(second.code, 0, second.stderr);
  const j = parseJson<PreDumpResult>(t, second);
  t.deepEqual(j.droppedFromParent, [leaf.pid]);
  const child = j.processes.find((p) => p.pid === born.pid)!;
  t.is(child.inParent, 'new');
  t.true(child.pagesWritten >= 1024, `the new process copied whole (${child.pagesWritten} pages)`);
  t.true(j.stoppedWindowMs > 0, 'the new process was stopped once, alone, to make its tracking');
  signalAll(all, 'SIGSTOP');
  const d = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '3'),
    '--prev-images-dir',
    '../2',
    '--leave-stopped',
    '--json',
  ]);
  t.is(d.code, 0, d.stderr);
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '3'), '--json']);
  t.is(v.code, 0, v.stderr);
  t.like(parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v), {
    ok: true,
    mismatches: 0,
    missing: 0,
  });
  signalAll(all, 'SIGCONT');
  for (const pid of all) {
    await assertRunningUntraced(t, pid);
    t.deepEqual(await uffdFds(pid), [], `process ${pid}: no uffd or marker of predump left`);
    // Besides: nothing of predump's mapped or open (the workload's own pipes to the
    // processes that came and went changed meanwhile).
    const was = before.get(pid);
    if (was) {
      const diff = leftoverDiff(was, await snapshot(pid))[0].filter((l) => !/pipe:\[/.test(l));
      t.deepEqual(diff, [], `process ${pid}`);
    }
  }
});

/** The userfaultfds and predump markers process `pid` holds, as fd: link. */
async function uffdFds(pid: number): Promise<string[]> {
  const out: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const link = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (/userfaultfd|predump-uffd/.test(link)) out.push(`${fd}: ${link}`);
  }
  return out;
}

test('freeze-free on a tree: a zombie in the tree is left out and named, the others pre-dumped', async (t) => {
  const { w } = await startTree(t);
  const { zombie } = await w.command<{ zombie: number }>('proc 3 zombie');
  const dir = path.join(await tempDir(t), 'img');
  const r = await preDumpFreeFree(w.pid, dir);
  t.is(r.code, 0, r.stderr);
  t.teardown(() => runCli(['untrack', '-t', String(w.pid)]));
  const j = parseJson<PreDumpResult>(t, r);
  t.is(j.mode, 'freeze-free');
  t.is(j.processes.length, 4);
  t.deepEqual(
    j.leftOut.map((l) => [l.pid, l.reason]),
    [[zombie, 'zombie']],
  );
  t.false((await readdir(dir)).includes(`pagemap-${zombie}.img`));
});
