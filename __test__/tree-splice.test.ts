/**
 * `pre-dump -t ROOT --pre-dump-mode splice` on a process tree: the whole tree frozen together,
 * each process's pages referenced into pipes by a vmsplice injected into it inside that one
 * freeze, the tree thawed, the pipes drained into each process's pages image; the shared
 * objects read through their file as in read mode. Chains with each tracking backend, closed by
 * `dump -t` and verified; a page server; a process killed before its pipes are drained; what
 * happens when the tree's pipes reach predump's open-file limit (the processes past it copied
 * as in read mode, named); the refusals, with message and exit code. Nothing of predump is left
 * in any process.
 */
import test, { type ExecutionContext } from 'ava';
import { copyFile, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { native } from '../ts/native.js';
import type { PreDumpResult } from '../ts/predump.js';
import {
  assertCliError,
  assertRunningUntraced,
  BIN,
  heldThreads,
  killAndWaitExit,
  leftoverDiff,
  mkfifo,
  NODE,
  parseJson,
  reachGate,
  runCli,
  signalAll,
  snapshot,
  startCli,
  startProcess,
  startTree,
  tempDir,
} from './helpers.js';

type T = ExecutionContext<unknown>;

/** The CLI's arguments for a splice pre-dump of the tree of `root` into `dir` (on `prev`). */
function spliceArgs(root: number, dir: string, prev?: string, track = 'auto'): string[] {
  const args = ['pre-dump', '-t', String(root), '-D', dir, '--pre-dump-mode', 'splice'];
  if (prev) args.push('--prev-images-dir', prev);
  return [...args, '--track-mem', track, '--json'];
}

/** Every process spliced: mode splice, no fallback, pipes and injected calls. */
function assertAllSpliced(t: T, j: PreDumpResult, processes: number): void {
  t.like(j, { mode: 'splice', requestedMode: 'splice', fallback: null, partial: false });
  t.is(j.processes.length, processes);
  for (const p of j.processes) t.is(p.fallback, null, `process ${p.pid} spliced`);
  t.true(j.pipes > 0, `${j.pipes} pipes`);
  t.true(j.injectedCalls > 0);
  t.true(j.pinnedBytes > 0);
}

/** `verify -t root -D dir`: 0 mismatches, nothing missing, every shared object compared. */
async function assertVerified(t: T, root: number, dir: string, objects: number): Promise<void> {
  const v = await runCli(['verify', '-t', String(root), '-D', dir, '--json']);
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<{
    ok: boolean;
    mismatches: number;
    missing: number;
    sharedMemory: unknown[];
  }>(t, v);
  t.like(vj, { ok: true, mismatches: 0, missing: 0 });
  t.is(vj.sharedMemory.length, objects);
}

/** The images' inventory as `show` reads it. */
async function shownMode(t: T, dir: string): Promise<string> {
  const s = await runCli(['show', dir, '--json']);
  t.is(s.code, 0, s.stderr);
  return parseJson<{ mode: string }>(t, s).mode;
}

// Each kernel runs the backends it has (the host: uffd-wp; Debian's 6.1: soft-dirty; 6.12 both).
const supported = new Set(
  (await native.checkKernel()).capabilities.filter((c) => c.supported).map((c) => c.name),
);

for (const backend of (['soft-dirty', 'uffd-wp'] as const).filter((b) => supported.has(b))) {
  test(`splice on a tree (${backend}): one freeze, every process spliced, a tracked second on its parent, dump -t, verify 0, nothing left`, async (t) => {
    const { w, procs, pids } = await startTree(t);
    t.teardown(() => signalAll(pids, 'SIGCONT'));
    const base = await tempDir(t);
    const before = await Promise.all(pids.map((pid) => snapshot(pid)));

    const first = await runCli(spliceArgs(w.pid, path.join(base, '1'), undefined, backend));
    t.is(first.code, 0, first.stderr);
    const j1 = parseJson<PreDumpResult>(t, first);
    assertAllSpliced(t, j1, 4);
    t.is(j1.trackBackend, backend);
    t.true(
      j1.sharedMemory!.length >= 2,
      'the shared objects are written (read through their file)',
    );
    t.is(await shownMode(t, path.join(base, '1')), 'splice');
    // Each process's pages image holds its pages; nothing of predump is in any process.
    const files = await readdir(path.join(base, '1'));
    for (const p of j1.processes) {
      t.true(files.includes(`pagemap-${p.pid}.img`));
      t.true(p.pagesWritten > 0 && p.pagesWritten === p.pagesPresent, `process ${p.pid}`);
    }
    for (const [i, pid] of pids.entries()) {
      await assertRunningUntraced(t, pid);
      const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
      // uffd-wp tracking stays (its userfaultfd and marker) until dump or untrack.
      if (backend === 'soft-dirty') t.deepEqual(diff, [], `process ${pid}: nothing left`);
    }

    // Writes in two processes, then the second on the first: only what changed is copied.
    await w.command('proc 3 dirty 100 21');
    await w.command('proc 0 dirty 50 22');
    const second = await runCli(spliceArgs(w.pid, path.join(base, '2'), '../1', backend));
    t.is(second.code, 0, second.stderr);
    const j2 = parseJson<PreDumpResult>(t, second);
    assertAllSpliced(t, j2, 4);
    t.is(j2.trackNote, null, 'every process trusted its parent');
    t.true(j2.pagesSkippedParent > 0);
    for (const p of procs) {
      const a = j1.processes.find((x) => x.pid === p.pid)!.pagesWritten;
      const b = j2.processes.find((x) => x.pid === p.pid)!.pagesWritten;
      t.true(b < a / 2, `process ${p.pid}: ${b} pages copied again of ${a}`);
    }
    const wrote = j2.processes.find((x) => x.pid === procs[3]!.pid)!.pagesWritten;
    t.true(wrote >= 100, `process 3 wrote ${wrote} pages (100 dirtied)`);

    // The summary, as a user reads it.
    await w.command('proc 2 dirty 30 23');
    const third = await runCli([
      'pre-dump',
      '-t',
      String(w.pid),
      '-D',
      path.join(base, '3'),
      '--prev-images-dir',
      '../2',
      '--pre-dump-mode',
      'splice',
      '--track-mem',
      backend,
    ]);
    t.is(third.code, 0, third.stderr);
    t.regex(third.stderr, /\n {2}mode {5}splice: pages referenced into pipes while frozen/);
    t.regex(third.stderr, /\n {2}frozen {3}.*calls injected in/);
    t.regex(third.stderr, /\n {2}pipes {4}\d+, .* pinned until written\n/);
    t.notRegex(third.stderr, /warning: splice mode/);

    // The chain closed by the tree's dump (frozen throughout: no splice), then verified.
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
    t.is(jd.trackBackend, backend, "the chain's tracking was read");
    t.true(jd.pagesSkippedParent > 0, 'the dump leaves unchanged pages to the chain');
    await assertVerified(t, w.pid, path.join(base, '4'), j1.sharedMemory!.length);
    signalAll(pids, 'SIGCONT');
    for (const [i, pid] of pids.entries()) {
      await assertRunningUntraced(t, pid);
      const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
      t.deepEqual(diff, [], `process ${pid}: nothing of predump left after the dump`);
    }
    t.true((await w.selfCheck()).ok);
  });
}

test('splice on a tree with uffd-wp, then untrack -t: nothing of predump left in any process', async (t) => {
  const { w, pids } = await startTree(t);
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  if (!supported.has('uffd-wp')) {
    t.log('uffd-wp tracking is not possible here');
    t.pass();
    return;
  }
  const r = await runCli(spliceArgs(w.pid, path.join(base, '1'), undefined, 'uffd-wp'));
  t.is(r.code, 0, r.stderr);
  assertAllSpliced(t, parseJson<PreDumpResult>(t, r), 4);
  const u = await runCli(['untrack', '-t', String(w.pid)]);
  t.is(u.code, 0, u.stderr);
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left after untrack`);
  }
});

test('splice on a stopped tree verifies page for page, to a directory and to a page server', async (t) => {
  const { w, pids } = await startTree(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const base = await tempDir(t);
  signalAll(pids, 'SIGSTOP'); // nothing changes until SIGCONT: verify is exact
  const local = await runCli(spliceArgs(w.pid, path.join(base, 'local'), undefined, 'none'));
  t.is(local.code, 0, local.stderr);
  const jl = parseJson<PreDumpResult>(t, local);
  assertAllSpliced(t, jl, 4);
  await assertVerified(t, w.pid, path.join(base, 'local'), jl.sharedMemory!.length);

  // To a page server: the pipes drained into the connection, each process under its own id.
  const server = startCli([
    'page-server',
    '-D',
    path.join(base, 'ps'),
    '--address',
    '127.0.0.1',
    '--port',
    '0',
    '--json',
  ]);
  t.teardown(() => {
    if (server.child.exitCode === null) server.child.kill('SIGKILL');
  });
  const line = await new Promise<string>((resolve) =>
    createInterface({ input: server.child.stdout! }).once('line', resolve),
  );
  const port = (JSON.parse(line) as { listening: { port: number } }).listening.port;
  const sent = await runCli([
    ...spliceArgs(w.pid, path.join(base, 'sent'), undefined, 'none'),
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    String(port),
  ]);
  t.is(sent.code, 0, sent.stderr);
  const js = parseJson<PreDumpResult>(t, sent);
  assertAllSpliced(t, js, 4);
  t.like(js.pageServer, { port, hasParent: false });
  const done = await server.done;
  t.is(done.code, 0, done.stderr);
  // The server's images, with the client's inventory beside them (what a migration copies).
  await copyFile(path.join(base, 'sent', 'inventory.img'), path.join(base, 'ps', 'inventory.img'));
  await assertVerified(t, w.pid, path.join(base, 'ps'), js.sharedMemory!.length);
  signalAll(pids, 'SIGCONT');
  for (const pid of pids) await assertRunningUntraced(t, pid);
});

test('splice on a tree: a process killed before its pipes are drained still has its whole image (its pages were pinned at the freeze)', async (t) => {
  const { w, procs, pids } = await startTree(t);
  const tmp = await tempDir(t);
  const gate = path.join(tmp, 'gate');
  await mkfifo(gate);
  const victim = procs[3]!.pid; // a leaf: killing it takes no other process along
  // Each spliced process waits at the gate before its pipes are drained, in tree order: the
  // victim is killed while the root's drain waits there, after the thaw.
  const cli = startCli(spliceArgs(w.pid, path.join(tmp, 'img'), undefined, 'none'), {
    PREDUMP_TEST_DRAIN_GATE: gate,
  });
  const fh = await reachGate(gate, cli);
  process.kill(victim, 'SIGKILL');
  await fh.write(Buffer.from('x'.repeat(procs.length)));
  const r = await cli.done;
  await fh.close();
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  assertAllSpliced(t, j, 4);
  const v = j.processes.find((p) => p.pid === victim)!;
  t.false(v.partial);
  t.true(v.pagesWritten > 0 && v.pagesWritten === v.pagesPresent, 'every page of it written');
  const size = (await readFile(path.join(tmp, 'img', `pages-${v.pagesId}.img`))).length;
  t.is(size, v.pagesWritten * 4096);
  for (const pid of pids.filter((p) => p !== victim)) await assertRunningUntraced(t, pid);
});

test('splice on a tree, predump killed inside its first injection: nothing held, the next run removes what it left and says so, every process as before', async (t) => {
  const { w, pids } = await startTree(t);
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const gate = path.join(base, 'gate');
  await mkfifo(gate);
  // The run waits at the gate once the root (the first process spliced) holds its pipes.
  const cli = startCli(spliceArgs(w.pid, path.join(base, 'killed'), undefined, 'none'), {
    PREDUMP_TEST_INJECT_GATE: `splice-pipes-received:${gate}`,
  });
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const fh = await reachGate(gate, cli);
  cli.child.kill('SIGKILL');
  await cli.done;
  await fh.close();
  for (const pid of pids) {
    t.deepEqual(await heldThreads(pid), [], `process ${pid}: the killed run held nothing`);
  }
  const left = leftoverDiff(before[0]!, await snapshot(w.pid))[0];
  t.true(left.length > 0, 'the killed run left its stub, scratch mapping or fds in the root');
  // The next splice pre-dump of the tree removes them before its scan, and says so.
  const r = await runCli(spliceArgs(w.pid, path.join(base, 'next'), undefined, 'none'));
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  assertAllSpliced(t, j, 4);
  t.regex(j.leftoversRemoved ?? '', new RegExp(`\\(process ${w.pid}\\)$`));
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left`);
  }
});

/** The CLI under an open-file limit of `nofile` (soft and hard): predump may not raise it. */
function runLimited(nofile: number, args: string[], env: NodeJS.ProcessEnv = {}) {
  return startProcess('prlimit', [`--nofile=${nofile}:${nofile}`, '--', NODE, BIN, ...args], env);
}

/** Checks each process not spliced of `j` (run under a limit of `nofile`) and returns them. */
function assertFellBack(t: T, j: PreDumpResult, nofile: number) {
  const fell = j.processes.filter((p) => p.fallback);
  for (const p of fell) {
    t.regex(
      p.fallback!,
      new RegExp(
        `reached what predump's open-file limit \\(${nofile}\\) can hold \\(\\d+ more pipes needed\\): its pages are copied after the thaw, as in read mode`,
      ),
    );
  }
  return fell;
}

test("splice on a tree past predump's open-file limit: the processes whose pipes would pass it are copied as in read mode, named with the reason; the images verify; one of them killed during its copy makes a partial pre-dump", async (t) => {
  const { w, pids } = await startTree(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  signalAll(pids, 'SIGSTOP'); // nothing changes until SIGCONT: verify is exact

  // Low enough that none of the tree's pipes can be held beyond the pool's one: every process
  // copied in read mode, the pre-dump says read mode with the reason, as one process's fallback.
  const low = await runLimited(90, spliceArgs(w.pid, path.join(base, 'low'), undefined, 'none'))
    .done;
  t.is(low.code, 0, low.stderr);
  const jl = parseJson<PreDumpResult>(t, low);
  t.is(assertFellBack(t, jl, 90).length, 4, 'no process spliced');
  t.like(jl, { mode: 'read', requestedMode: 'splice', pipes: 0 });
  t.regex(jl.fallback!, /open-file limit \(90\)/);
  t.regex(
    low.stderr,
    /warning: splice mode is not possible here \(.*open-file limit.*\): used read mode/,
  );
  t.is(await shownMode(t, path.join(base, 'low')), 'read');
  await assertVerified(t, w.pid, path.join(base, 'low'), jl.sharedMemory!.length);

  // Higher limits until some processes are spliced and the later ones are not (the node
  // process's own fds vary): each spliced process holds its pipes' read ends until drained.
  let mixed: { nofile: number; j: PreDumpResult; stderr: string } | undefined;
  for (let nofile = 96; nofile <= 200 && !mixed; nofile += 8) {
    const dir = path.join(base, `limit-${nofile}`);
    const r = await runLimited(nofile, spliceArgs(w.pid, dir, undefined, 'none')).done;
    t.is(r.code, 0, r.stderr);
    const j = parseJson<PreDumpResult>(t, r);
    const fell = j.processes.filter((p) => p.fallback);
    if (j.mode === 'splice' && fell.length > 0) mixed = { nofile, j, stderr: r.stderr };
  }
  if (!mixed) {
    t.fail('no open-file limit from 96 to 200 spliced some processes and not others');
    return;
  }
  const { nofile, j } = mixed;
  const fell = assertFellBack(t, j, nofile);
  t.log(`limit ${nofile}: not spliced ${fell.map((p) => p.pid).join(', ')} of 4`);
  t.like(j, { mode: 'splice', fallback: null });
  t.true(j.pipes > 0);
  for (const p of fell) {
    t.regex(
      mixed.stderr,
      new RegExp(
        `warning: splice mode was not possible for process ${p.pid} \\(.*\\): its pages were copied in read mode`,
      ),
    );
  }
  t.is(await shownMode(t, path.join(base, `limit-${nofile}`)), 'splice');
  await assertVerified(t, w.pid, path.join(base, `limit-${nofile}`), j.sharedMemory!.length);
  for (const [i, pid] of pids.entries()) {
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left by the three runs`);
  }

  // The same limit, the last process (in tree order: a leaf, copied in read mode) killed
  // while the first one's drain waits at the gate: its copy finds it gone, exit 3, named.
  const victim = j.processes[j.processes.length - 1]!.pid;
  t.truthy(
    fell.find((p) => p.pid === victim),
    'the last process is copied in read mode',
  );
  const gate = path.join(base, 'gate');
  await mkfifo(gate);
  const cli = runLimited(nofile, spliceArgs(w.pid, path.join(base, 'partial'), undefined, 'none'), {
    PREDUMP_TEST_DRAIN_GATE: gate,
  });
  const fh = await reachGate(gate, cli);
  // Gone before any copy goes on: its copy must not race the SIGKILL (a0c331e).
  await killAndWaitExit(victim);
  await fh.write(Buffer.from('x'.repeat(4)));
  const r = await cli.done;
  await fh.close();
  t.is(r.code, 3, r.stderr);
  const jp = parseJson<PreDumpResult>(t, r);
  t.true(jp.partial);
  t.deepEqual(
    jp.processes.filter((p) => p.partial).map((p) => p.pid),
    [victim],
  );
  t.regex(r.stderr, new RegExp(`process ${victim} exited during the copy`));

  signalAll(pids, 'SIGCONT');
  // Its parent maps memory of its own once it learns of the death (a thread to reap it):
  // the others are compared with their state before.
  const parent = j.processes.find((p) => p.pid === victim)!.ppid;
  for (const [i, pid] of pids.entries()) {
    if (pid === victim) continue;
    await assertRunningUntraced(t, pid);
    if (pid === parent) continue;
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left`);
  }
});

test('splice on a tree: what is refused, with message and exit code, nothing touched', async (t) => {
  const { w, procs } = await startTree(t);
  const base = await tempDir(t);
  // A final dump is frozen throughout: it has no mode to choose (the API refuses splice, see
  // the core's mode.rs tests).
  const d = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'd'),
    '--pre-dump-mode',
    'splice',
  ]);
  t.is(d.code, 2, d.stderr);
  t.regex(d.stderr, /Unknown arguments: pre-dump-mode/);
  const cases: [string[], number, string, RegExp][] = [
    // A pid that is no process.
    [
      ['pre-dump', '-t', '999999999', '--pre-dump-mode', 'splice'],
      1,
      'ESRCH',
      /no such process: 999999999/,
    ],
  ];
  for (const [i, [args, exit, code, message]] of cases.entries()) {
    const dir = path.join(base, `img-${i}`);
    const r = await runCli([...args, '-D', dir, '--json']);
    assertCliError(t, r, { exit, code, message });
    t.false((await readdir(base)).includes(`img-${i}`), 'no directory left behind');
  }
  // Splice to a page server nobody listens on: refused before the tree is touched.
  const r = await runCli([
    ...spliceArgs(w.pid, path.join(base, 'ps'), undefined, 'none'),
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    '1',
  ]);
  t.not(r.code, 0);
  t.regex(r.stderr, /127\.0\.0\.1:1|connect|refused/i);
  for (const p of procs) await assertRunningUntraced(t, p.pid);
});
