// Over 800 lines: one subject (pre-dumps of process trees), its tests sharing the tree
// launcher, the per-process image checks and the tracking helpers defined below.
/**
 * `pre-dump -t ROOT` on a process tree: the whole tree frozen together, one pagemap and pages
 * image per process, each anonymous shared memory object once, everything thawed; and the
 * refusals of what a tree does not support yet.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { decodeImage, decodePagemapEntry, decodePagemapHead } from '../ts/images/index.js';
import { native } from '../ts/native.js';
import type { PredumpError } from '../ts/errors.js';
import { preDump, type PreDumpResult } from '../ts/predump.js';
import {
  assertCliError,
  assertRunningUntraced,
  CRIT,
  procState,
  reachGate,
  crit,
  heldThreads,
  leftoverDiff,
  MiB,
  mkfifo,
  PAGE,
  ROOT,
  parseJson,
  runCli,
  snapshot,
  startCli,
  signalAll,
  startTree,
  startWorkload,
  tempDir,
} from './helpers.js';

type T = ExecutionContext<unknown>;

interface Pagemap {
  pagesId: number;
  entries: { vaddr: number; nrPages: number; flags: number }[];
}

async function readPagemap(file: string): Promise<Pagemap> {
  const recs = decodeImage(await readFile(file), file, 'PAGEMAP').records;
  return {
    pagesId: decodePagemapHead(recs[0]!).pagesId,
    entries: recs.slice(1).map((r) => {
      const e = decodePagemapEntry(r);
      return { vaddr: e.vaddr, nrPages: e.nrPages ?? e.compatNrPages, flags: e.flags ?? 0 };
    }),
  };
}

/**
 * A read-mode pre-dump of `pid` alone with uffd-wp tracking, as a user may have made before
 * pre-dumping its tree: true once it holds the tracking, false (said) where this kernel
 * cannot track with uffd-wp; any other failure fails the test.
 */
async function trackAlone(t: T, pid: number, dir: string): Promise<boolean> {
  const r = await runCli([
    'pre-dump',
    '-t',
    String(pid),
    '-D',
    dir,
    '--track-mem',
    'uffd-wp',
    '--pre-dump-mode',
    'read',
  ]);
  if (r.code !== 0 && /userfaultfd|uffd/.test(r.stderr)) {
    t.log(`uffd-wp tracking is not possible here: ${r.stderr}`);
    return false;
  }
  t.is(r.code, 0, r.stderr);
  return r.code === 0;
}

async function checkPattern(
  pages: string,
  entries: Pagemap['entries'],
  area: { start: number; bytes: number },
): Promise<{ checked: number; mismatches: number }> {
  const r = await native.checkPattern(
    pages,
    new Float64Array(entries.flatMap((e) => [e.vaddr, e.nrPages])),
    new Float64Array([area.start, area.bytes]),
    new Float64Array([]),
  );
  return { checked: r.pagesChecked, mismatches: r.mismatches };
}

test('a tree is pre-dumped whole: a pagemap per process, each shared object once, all thawed', async (t) => {
  const { w, procs } = await startTree(t);
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult & { ok: boolean }>(t, r);
  t.true(j.ok);

  // Every process, the root first, each after its parent (CRIU's order).
  const pids = j.processes.map((p) => p.pid);
  t.deepEqual([...pids].sort(), procs.map((p) => p.pid).sort());
  t.is(pids[0], w.pid);
  for (const [i, p] of j.processes.entries()) {
    if (i > 0) t.true(pids.indexOf(p.ppid!) < i, `process ${p.pid} comes after its parent`);
  }
  t.is(j.threads, 4 * 2, 'every thread of every process was frozen');
  t.deepEqual(j.leftOut, []);

  // The two shared regions, each once, mapped by all four processes; the workload's
  // epoch tables are shared objects too.
  const shared = [w.shared!, w.devzero!];
  const objects = j.sharedMemory!;
  for (const s of shared) {
    const o = objects.find((x) => x.shmid === s.inode);
    t.truthy(o, `object ${s.inode} is pre-dumped`);
    t.is(o!.sizeBytes, s.bytes);
    t.deepEqual([...o!.pids].sort(), [...pids].sort());
  }
  // Ids as CRIU numbers them: the objects 1..S (shmid % 32 ascending), then the processes.
  const S = objects.length;
  t.deepEqual(
    objects.map((o) => o.pagesId),
    objects.map((_, i) => i + 1),
  );
  t.deepEqual(
    j.processes.map((p) => p.pagesId),
    j.processes.map((_, i) => S + i + 1),
  );
  const buckets = objects.map((o) => o.shmid % 32);
  t.deepEqual(
    buckets,
    [...buckets].sort((a, b) => a - b),
  );

  // The files: one pagemap per process and per object, one pages image per pagemap.
  const names = (await readdir(dir)).sort();
  const expected = [
    'inventory.img',
    'stats-dump',
    ...pids.map((p) => `pagemap-${p}.img`),
    ...objects.map((o) => `pagemap-shmem-${o.shmid}.img`),
    ...[...Array(S + pids.length).keys()].map((i) => `pages-${i + 1}.img`),
    // predump's record of the tracking's arming, for the next pre-dump on this one.
    ...(j.trackBackend === 'none' ? [] : ['predump-track.json']),
  ].sort();
  t.deepEqual(names, expected);
  if (CRIT) {
    for (const n of names.filter((x) => !x.startsWith('pages-') && !x.endsWith('.json'))) {
      const d = await crit(path.join(dir, n));
      t.truthy(d.magic, `crit decodes ${n}`);
    }
    const head = (await crit(path.join(dir, `pagemap-shmem-${w.shared!.inode}.img`)))
      .entries[0] as { pages_id: number };
    t.is(head.pages_id, objects.find((o) => o.shmid === w.shared!.inode)!.pagesId);
  } else {
    t.log('crit is not installed: images not decoded by crit');
  }

  // Each process's data region is in its own pages image, page for page; no process
  // image holds a page of the shared regions.
  for (const p of procs) {
    const pm = await readPagemap(path.join(dir, `pagemap-${p.pid}.img`));
    t.is(pm.pagesId, j.processes.find((x) => x.pid === p.pid)!.pagesId);
    const c = await checkPattern(path.join(dir, `pages-${pm.pagesId}.img`), pm.entries, p.data);
    t.is(c.mismatches, 0, `process ${p.pid}`);
    t.is(c.checked, p.data.bytes / PAGE, `every data page of process ${p.pid}`);
    for (const s of shared) {
      t.false(
        pm.entries.some((e) => e.vaddr < s.start + s.bytes && e.vaddr + e.nrPages * PAGE > s.start),
        `process ${p.pid}'s pagemap holds no page of shared object ${s.inode}`,
      );
    }
  }
  // Each shared object by offset: its pattern is by offset.
  for (const s of shared) {
    const pm = await readPagemap(path.join(dir, `pagemap-shmem-${s.inode}.img`));
    t.is(pm.entries[0]!.vaddr, 0);
    const c = await checkPattern(path.join(dir, `pages-${pm.pagesId}.img`), pm.entries, {
      start: 0,
      bytes: s.bytes,
    });
    t.is(c.mismatches, 0, `object ${s.inode}`);
    t.is(c.checked, s.bytes / PAGE, `every page of object ${s.inode}`);
  }

  for (const p of procs) await assertRunningUntraced(t, p.pid);
  const self = await w.selfCheck();
  t.true(self.ok, JSON.stringify(self));
});

test('the summary lists the processes and the shared objects', async (t) => {
  const { w, procs } = await startTree(t);
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`pre-dumped the tree of pid ${w.pid}: 4 processes \\(8 threads\\)`));
  for (const p of procs) t.regex(r.stderr, new RegExp(`\\n  process  ${p.pid} \\(`));
  t.regex(
    r.stderr,
    new RegExp(`\\n  shmem    ${w.shared!.inode}: 1\\.00 MiB, 256 pages written once`),
  );
  t.regex(
    r.stderr,
    new RegExp(`\\n  shmem    ${w.devzero!.inode}: 512\\.0 KiB, 128 pages written once`),
  );
  // auto: tracked with uffd-wp where this kernel can (the CLI says what criu dump then needs).
  if (/holds? predump's userfaultfd/.test(r.stderr)) {
    t.regex(
      r.stderr,
      new RegExp(`the 4 processes of the tree of ${w.pid} now hold predump's userfaultfd`),
    );
    // A first pre-dump: nothing to compare shared memory with, and nothing to say about it.
    t.notRegex(r.stderr, /shared memory is not tracked|copied whole/);
  } else {
    t.regex(r.stderr, /no dirty tracking/);
  }
});

test('a zombie in the tree is left out and named', async (t) => {
  const { w } = await startTree(t);
  const { zombie } = await w.command<{ zombie: number }>('proc 3 zombie');
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.is(j.processes.length, 4);
  t.is(j.leftOut.length, 1);
  t.is(j.leftOut[0]!.pid, zombie);
  t.is(j.leftOut[0]!.reason, 'zombie');
  t.false((await readdir(dir)).includes(`pagemap-${zombie}.img`));
  const human = await runCli(['pre-dump', '-t', String(w.pid), '-D', `${dir}-2`]);
  t.is(human.code, 0, human.stderr);
  t.regex(
    human.stderr,
    new RegExp(`left out ${zombie} \\(.*\\), child of \\d+: a zombie \\(it has exited`),
  );
});

test('a process of the tree traced by someone else: ETRACED, none left frozen', async (t) => {
  const { w, procs } = await startTree(t);
  const victim = procs[3]!.pid;
  // Another tracer (as a debugger would be): PTRACE_SEIZE, which does not stop it.
  const holder = spawn(
    'python3',
    [
      '-c',
      'import ctypes,sys\n' +
        'libc=ctypes.CDLL(None,use_errno=True)\n' +
        `r=libc.ptrace(0x4206,${victim},0,0)\n` +
        'print("seized" if r==0 else "failed %d" % ctypes.get_errno(),flush=True)\n' +
        'sys.stdin.read()\n',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  t.teardown(() => holder.kill('SIGKILL'));
  const first = await new Promise<string>((resolve) =>
    createInterface({ input: holder.stdout }).once('line', resolve),
  );
  t.is(first, 'seized');
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'ETRACED',
    message: new RegExp(`process ${victim}.*traced by pid ${holder.pid}`),
  });
  for (const p of procs.filter((x) => x.pid !== victim)) await assertRunningUntraced(t, p.pid);
  holder.stdin.end();
  await new Promise((resolve) => holder.once('close', resolve));
  await assertRunningUntraced(t, victim);
});

test("the caller's own ancestor as the root: ESELF, nothing frozen", async (t) => {
  // The CLI is a child of this test process: a tree rooted here holds the CLI.
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(process.pid), '-D', dir, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'ESELF',
    message: new RegExp(`the tree of process ${process.pid} holds this predump process`),
  });
});

interface SharedTree {
  pid: number;
  pids: number[];
  anon: { start: number; bytes: number; inode: number };
  devzero: { start: number; bytes: number; inode: number };
  file: { start: number; bytes: number };
  memfd: { start: number; bytes: number };
  sysv: { start: number; bytes: number };
}

/** __test__/fixtures/shared-tree.py: 3 processes with every kind of shared mapping. */
async function startSharedTree(t: T): Promise<SharedTree> {
  const folder = await tempDir(t);
  const child = spawn('python3', [path.join(ROOT, '__test__/fixtures/shared-tree.py'), folder], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('close', () => reject(new Error('shared-tree.py exited before it was ready')));
  });
  const tree = JSON.parse(line) as SharedTree;
  t.teardown(() => {
    for (const pid of tree.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    child.stdin.end();
  });
  return tree;
}

test('shared memory: each anonymous object once by offset; file, memfd and SysV listed with size and reason', async (t) => {
  const tree = await startSharedTree(t);
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(tree.pid), '-D', dir, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.deepEqual(
    j.processes.map((p) => p.pid),
    tree.pids,
  );
  // The anonymous object: all 16 pages once, though the child maps only its second half.
  const anon = j.sharedMemory!.find((o) => o.shmid === tree.anon.inode)!;
  t.truthy(anon);
  t.is(anon.sizeBytes, 16 * PAGE);
  t.is(anon.pagesWritten, 16);
  t.is(anon.mappings, 3);
  t.deepEqual([...anon.pids].sort(), [...tree.pids].sort());
  const zero = j.sharedMemory!.find((o) => o.shmid === tree.devzero.inode)!;
  t.is(zero.pagesWritten, 4);
  for (const [o, first] of [
    [anon, 1],
    [zero, 101],
  ] as const) {
    const pm = await readPagemap(path.join(dir, `pagemap-shmem-${o.shmid}.img`));
    t.deepEqual(pm.entries, [{ vaddr: 0, nrPages: o.pagesWritten, flags: 4 }]);
    const pages = await readFile(path.join(dir, `pages-${pm.pagesId}.img`));
    t.is(pages.length, o.pagesWritten * PAGE);
    for (let i = 0; i < o.pagesWritten; i++) {
      t.true(
        pages.subarray(i * PAGE, (i + 1) * PAGE).every((b) => b === first + i),
        `page ${i} of object ${o.shmid}`,
      );
    }
  }
  // What is not pre-dumped, in every process (they all inherited it), with size and reason.
  const expected = [
    { kind: 'file-shared', area: tree.file, reason: /a shared mapping of a file/ },
    { kind: 'memfd', area: tree.memfd, reason: /memfd: CRIU dumps its contents with the file/ },
    { kind: 'sysv-shm', area: tree.sysv, reason: /SysV shared memory: CRIU dumps it with the IPC/ },
  ];
  for (const pid of tree.pids) {
    for (const e of expected) {
      const n = j.notPreDumped!.find((x) => x.pid === pid && x.start === e.area.start);
      t.truthy(n, `${e.kind} of process ${pid} is listed`);
      t.is(n!.kind, e.kind);
      t.is(n!.bytes, e.area.bytes);
      t.regex(n!.reason, e.reason);
    }
  }
  // Others may be listed (glibc maps gconv-modules.cache shared), but never shmem.
  t.false(j.notPreDumped!.some((n) => n.kind === 'shmem' || n.name.startsWith('/dev/zero')));
  for (const pid of tree.pids) await assertRunningUntraced(t, pid);

  const human = await runCli(['pre-dump', '-t', String(tree.pid), '-D', `${dir}-2`]);
  t.is(human.code, 0, human.stderr);
  t.regex(
    human.stderr,
    new RegExp(
      `\\n  skipped  /memfd:predump-test \\(deleted\\) in process ${tree.pid} at 0x${tree.memfd.start.toString(16)} \\(12\\.0 KiB\\): memfd`,
    ),
  );
  t.regex(
    human.stderr,
    new RegExp(`\\n  shmem    ${tree.anon.inode}: 64\\.0 KiB, 16 pages written once`),
  );
});

test("a single process's anonymous shared memory is pre-dumped as a tree of one's, in its own mode, splice too", async (t) => {
  const { w } = await startWorkload(t, {
    sizeBytes: 1 * MiB,
    threads: 1,
    sharedBytes: 1 * MiB,
    devzeroBytes: 512 * 1024,
  });
  const base = await tempDir(t);
  const areas = [w.shared!, w.devzero!];
  const preDump = async (n: number, ...more: string[]) => {
    const r = await runCli([
      'pre-dump',
      '-t',
      String(w.pid),
      '-D',
      path.join(base, String(n)),
      ...(n > 1 ? ['--prev-images-dir', `../${n - 1}`] : []),
      ...more,
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    return parseJson<PreDumpResult>(t, r);
  };
  // Read mode: both objects written whole, by offset.
  const one = await preDump(1, '--pre-dump-mode', 'read');
  t.is(one.mode, 'read');
  t.deepEqual(
    one.processes.map((p) => p.pid),
    [w.pid],
  );
  // The workload's own shared tables besides.
  const shmids = one.sharedMemory!.map((s) => s.shmid);
  for (const a of areas) t.true(shmids.includes(a.inode), `object ${a.inode} is pre-dumped`);
  t.false(one.notPreDumped.some((n) => n.kind === 'shmem'));
  for (const a of areas) {
    t.true(existsSync(path.join(base, '1', `pagemap-shmem-${a.inode}.img`)));
  }
  // auto: the mode one process takes (freeze-free where uffd-wp works), shared memory written.
  const two = await preDump(2);
  t.is(two.mode as string, native.resolvePreDumpMode('auto', 'auto', false));
  t.is(two.requestedMode, 'auto');
  t.is(two.sharedMemory!.length, shmids.length);
  // Splice mode: the process's pages through pipes, its shared memory written too.
  const three = await preDump(3, '--pre-dump-mode', 'splice');
  t.is(three.mode, 'splice');
  t.is(three.fallback, null);
  t.true(three.pipes > 0);
  t.is(three.sharedMemory!.length, shmids.length);
  t.false(three.notPreDumped.some((n) => n.kind === 'shmem'));
  t.true(existsSync(path.join(base, '3', `pagemap-shmem-${w.shared!.inode}.img`)));
  // A dump closes the chain with the shared memory, and verify compares it too.
  process.kill(w.pid, 'SIGSTOP');
  t.teardown(() => signalAll([w.pid], 'SIGCONT'));
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
  t.is(parseJson<PreDumpResult>(t, d).sharedMemory!.length, shmids.length);
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '4'), '--json']);
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<{ mismatches: number; sharedMemory: { shmid: number }[] }>(t, v);
  t.is(vj.mismatches, 0);
  t.is(vj.sharedMemory.length, shmids.length);
  process.kill(w.pid, 'SIGCONT');
  await assertRunningUntraced(t, w.pid);
});

test('verify and show on a tree: every process and shared object compared; a change is found', async (t) => {
  const { w, procs } = await startTree(t);
  const pids = procs.map((p) => p.pid);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  signalAll(pids, 'SIGSTOP'); // nothing changes until SIGCONT: verify is exact
  const dir = path.join(await tempDir(t), 'img');
  const r = await runCli(['pre-dump', '-t', String(w.pid), '-D', dir, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);

  const v = await runCli(['verify', '-t', String(w.pid), '-D', dir, '--json']);
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<{
    ok: boolean;
    processes: { pid: number; pagesCompared: number; mismatches: number }[];
    sharedMemory: { shmid: number; pagesCompared: number; mismatches: number; missing: number }[];
    notInImages: number[];
    mismatches: number;
    missing: number;
  }>(t, v);
  t.true(vj.ok);
  t.deepEqual(vj.processes.map((p) => p.pid).sort(), [...pids].sort());
  for (const p of vj.processes) {
    t.is(p.pagesCompared, j.processes.find((x) => x.pid === p.pid)!.pagesWritten);
  }
  t.deepEqual(
    vj.sharedMemory.map((o) => [o.shmid, o.pagesCompared]),
    j.sharedMemory!.map((o) => [o.shmid, o.pagesWritten]),
  );
  t.is(vj.mismatches, 0);
  t.is(vj.missing, 0);
  t.deepEqual(vj.notInImages, []);
  const human = await runCli(['verify', '-t', String(w.pid), '-D', dir]);
  t.is(human.code, 0, human.stderr);
  t.regex(human.stderr, /verified the tree of process \d+: 4 processes, \d+ shared memory objects/);
  t.regex(human.stderr, /\nverify ok$/m);

  const show = await runCli(['show', dir, '--json']);
  t.is(show.code, 0, show.stderr);
  const sj = parseJson<{
    pid: number;
    processes: { pid: number; pagesId: number; pagesPresent: number }[];
    sharedMemory: { shmid: number; pagesPresent: number }[];
    pagesPresent: number;
  }>(t, show);
  t.is(sj.pid, w.pid, 'the root');
  t.deepEqual(
    sj.processes.map((p) => [p.pid, p.pagesId, p.pagesPresent]),
    j.processes.map((p) => [p.pid, p.pagesId, p.pagesWritten]),
  );
  t.deepEqual(
    sj.sharedMemory.map((o) => [o.shmid, o.pagesPresent]),
    j.sharedMemory!.map((o) => [o.shmid, o.pagesWritten]),
  );
  t.is(sj.pagesPresent, j.pagesWritten);
  const showText = await runCli(['show', dir, '--no-entries']);
  t.regex(showText.stdout, /processes {6}4 \(a process tree; root \d+, the first below\)/);
  t.regex(
    showText.stdout,
    new RegExp(`shmem ${w.shared!.inode} +pages-\\d+\\.img  1 entries, 256 pages present`),
  );

  // A shared page and a private page of process 3 rewritten: both are found.
  signalAll(pids, 'SIGCONT');
  await w.command('shared-dirty-range shared 5 1');
  await w.command('proc 3 dirty 10 7');
  signalAll(pids, 'SIGSTOP');
  const bad = await runCli(['verify', '-t', String(w.pid), '-D', dir, '--json']);
  t.is(bad.code, 1, bad.stderr);
  const bj = parseJson<typeof vj>(t, bad);
  t.false(bj.ok);
  t.is(bj.sharedMemory.find((o) => o.shmid === w.shared!.inode)!.mismatches, 1);
  t.true(bj.processes.find((p) => p.pid === procs[3]!.pid)!.mismatches > 0);
  t.regex(bad.stderr, /verify FAILED/);
});

test('an incremental pre-dump of a tree: a new process dumped whole, an exited one dropped', async (t) => {
  const { w, procs } = await startTree(t);
  const base = await tempDir(t);
  const first = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '1'),
    '--json',
  ]);
  t.is(first.code, 0, first.stderr);
  const leaf = procs[2]!; // a child of the root, with no children
  await w.command('proc 2 exit');
  const born = await w.command<{ index: number; pid: number }>('spawn 1');
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '2'),
    '--prev-images-dir',
    '../1',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.is(j.parent, path.join(base, '1'));
  const pids = j.processes.map((p) => p.pid);
  t.false(pids.includes(leaf.pid), 'the exited process is not pre-dumped');
  t.deepEqual(j.droppedFromParent, [leaf.pid]);
  t.is(j.processes.find((p) => p.pid === born.pid)!.inParent, 'new');
  for (const p of j.processes.filter((x) => x.pid !== born.pid)) t.is(p.inParent, 'yes');
  // auto tracks with uffd-wp where this kernel can; without, every process's page is copied
  // again. Shared memory is compared with the parent either way: no note of it.
  if (j.trackBackend === 'uffd-wp') t.notRegex(j.trackNote ?? '', /shared memory/);
  else
    t.regex(
      j.trackNote ?? '',
      /every process's pages are copied again \(shared memory is compared/,
    );
  const names = await readdir(path.join(base, '2'));
  t.true(names.includes(`pagemap-${born.pid}.img`));
  t.false(names.includes(`pagemap-${leaf.pid}.img`));
  t.true(names.includes('parent'));
  if (CRIT) {
    for (const n of names.filter((x) => x.startsWith('pagemap-'))) {
      t.truthy((await crit(path.join(base, '2', n))).magic, n);
    }
  }
  // The new process's data region, page for page.
  const now = await w.tree();
  const bornData = now.find((p) => p.pid === born.pid)!.data;
  const pm = await readPagemap(path.join(base, '2', `pagemap-${born.pid}.img`));
  const c = await checkPattern(
    path.join(base, '2', `pages-${pm.pagesId}.img`),
    pm.entries,
    bornData,
  );
  t.is(c.mismatches, 0);
  t.is(c.checked, bornData.bytes / PAGE);
  const human = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '3'),
    '--prev-images-dir',
    '../1',
  ]);
  t.is(human.code, 0, human.stderr);
  t.regex(human.stderr, new RegExp(`process  ${born.pid} \\(.*; new since the parent images`));
  t.regex(
    human.stderr,
    new RegExp(`dropped  ${leaf.pid}: in the parent images, no longer in the tree`),
  );
  for (const p of j.processes) await assertRunningUntraced(t, p.pid);
});

// The point of a chain: with uffd-wp tracking, each process of the tree copies only what it
// wrote since its parent (and what its parent lacks), and the pages it leaves to the parent
// are still what the process holds. Verified against the live (stopped) tree: a write the
// tracking missed would be a mismatch in a page left to the parent.
test('incremental pre-dumps of a tree with uffd-wp tracking: each process copies what it wrote, the chain verifies', async (t) => {
  const { w, procs } = await startTree(t);
  const pids = procs.map((p) => p.pid);
  const base = await tempDir(t);
  const preDumpTracked = (name: string, extra: string[] = []) =>
    runCli([
      'pre-dump',
      '-t',
      String(w.pid),
      '-D',
      path.join(base, name),
      '--track-mem',
      'uffd-wp',
      '--json',
      ...extra,
    ]);
  const first = await preDumpTracked('1');
  if (first.code !== 0 && /userfaultfd|uffd/.test(first.stderr)) {
    t.log(`uffd-wp tracking is not possible here: ${first.stderr}`);
    t.pass();
    return;
  }
  t.is(first.code, 0, first.stderr);
  const j1 = parseJson<PreDumpResult>(t, first);
  t.is(j1.trackBackend, 'uffd-wp');
  t.regex(first.stderr, new RegExp(`the 4 processes of the tree of ${w.pid} now hold`));
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const dirtied = 100; // per mille of process 3's 1,024 data pages
  await w.command(`proc 3 dirty ${dirtied} 11`);
  signalAll(pids, 'SIGSTOP'); // nothing changes after this: verify is exact
  const second = await preDumpTracked('2', ['--prev-images-dir', '../1']);
  t.is(second.code, 0, second.stderr);
  const j2 = parseJson<PreDumpResult>(t, second);
  t.is(j2.trackBackend, 'uffd-wp');
  t.is(j2.trackNote, null, 'shared memory is compared with the parent: no note');
  for (const o of j2.sharedMemory!) t.like(o, { pagesWritten: 0, inParent: 'yes' });
  const written = (j: PreDumpResult, pid: number) =>
    j.processes.find((p) => p.pid === pid)!.pagesWritten;
  const wrote = written(j2, procs[3]!.pid);
  t.true(wrote >= (1024 * dirtied) / 1000, `process 3 wrote ${wrote} pages`);
  for (const p of procs) {
    const [a, b] = [written(j1, p.pid), written(j2, p.pid)];
    t.log(`process ${p.pid}: ${a} pages, then ${b}`);
    t.true(b < a / 3, `process ${p.pid}: ${b} pages copied again of ${a}`);
  }
  t.true(j2.pagesSkippedParent > 0);
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '2'), '--json']);
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v);
  t.like(vj, { ok: true, mismatches: 0, missing: 0 });
  if (CRIT) {
    const pm = await crit(path.join(base, '2', `pagemap-${procs[3]!.pid}.img`));
    t.truthy(pm.magic);
  }
  const pm = await readPagemap(path.join(base, '2', `pagemap-${procs[3]!.pid}.img`));
  t.true(
    pm.entries.some((e) => e.flags === 1),
    'PE_PARENT entries name the pages left to the parent',
  );
  // A third pre-dump on the second checks the chain below it, process by process: with
  // the first gone, the pages the second leaves to it are nowhere: EPARENT, nothing written.
  const third = await preDumpTracked('3', ['--prev-images-dir', '../2']);
  t.is(third.code, 0, third.stderr);
  await rename(path.join(base, '1'), path.join(base, '1-moved'));
  const broken = await preDumpTracked('4', ['--prev-images-dir', '../2']);
  assertCliError(t, broken, {
    exit: 1,
    code: 'EPARENT',
    message: /the chain of parent images \.\.\/2 is broken: .*1.* do not exist/,
  });
  t.false(existsSync(path.join(base, '4')), 'nothing written');
  signalAll(pids, 'SIGCONT');
  // A failure ends nothing it did not start; untrack ends the tracking in the whole tree.
  const u = await runCli(['untrack', '-t', String(w.pid), '--json']);
  t.is(u.code, 0, u.stderr);
  for (const p of procs) await assertRunningUntraced(t, p.pid);
});

test("a tree's dump on a uffd-wp tracked chain: copies only what each process wrote, verifies, ends the tracking", async (t) => {
  const { w, procs } = await startTree(t);
  const pids = procs.map((p) => p.pid);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const base = await tempDir(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const first = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '1'),
    '--track-mem',
    'uffd-wp',
    '--json',
  ]);
  if (first.code !== 0 && /userfaultfd|uffd/.test(first.stderr)) {
    t.log(`uffd-wp tracking is not possible here: ${first.stderr}`);
    t.pass();
    return;
  }
  t.is(first.code, 0, first.stderr);
  const j1 = parseJson<PreDumpResult>(t, first);
  const dirtied = 100; // per mille of process 3's 1,024 data pages
  await w.command(`proc 3 dirty ${dirtied} 12`);
  signalAll(pids, 'SIGSTOP'); // nothing changes after this: verify is exact
  const r = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '2'),
    '--prev-images-dir',
    '../1',
    '--leave-stopped',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult & { copiedWhileFrozen: boolean }>(t, r);
  t.true(j.copiedWhileFrozen);
  t.is(j.trackBackend, 'uffd-wp', "the chain's tracking was read");
  const written = (x: PreDumpResult, pid: number) =>
    x.processes.find((p) => p.pid === pid)!.pagesWritten;
  const wrote = written(j, procs[3]!.pid);
  t.true(wrote >= (1024 * dirtied) / 1000, `process 3 wrote ${wrote} pages`);
  for (const p of procs) {
    const [a, b] = [written(j1, p.pid), written(j, p.pid)];
    t.log(`process ${p.pid}: ${a} pages pre-dumped, then ${b} dumped`);
    t.true(b < a / 3, `process ${p.pid}: ${b} pages dumped again of ${a}`);
  }
  t.true(j.pagesSkippedParent > 0);
  const pm = await readPagemap(path.join(base, '2', `pagemap-${procs[3]!.pid}.img`));
  t.true(
    pm.entries.some((e) => e.flags === 1),
    'PE_PARENT entries name the pages left to the parent',
  );
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '2'), '--json']);
  t.is(v.code, 0, v.stderr);
  t.like(parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v), {
    ok: true,
    mismatches: 0,
    missing: 0,
  });
  // Nothing of predump is left in any process: no userfaultfd, no marker, no mapping.
  signalAll(pids, 'SIGCONT');
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left`);
  }
  t.true((await w.selfCheck()).ok);
});

test("a tree's parent images of another process: EPARENT, nothing written", async (t) => {
  const { w } = await startTree(t);
  const other = await startTree(t);
  const base = await tempDir(t);
  const first = await runCli(['pre-dump', '-t', String(other.w.pid), '-D', path.join(base, '1')]);
  t.is(first.code, 0, first.stderr);
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '2'),
    '--prev-images-dir',
    '../1',
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'EPARENT',
    message: new RegExp(
      `parent images \\.\\./1 were made for processes .*, not the tree of ${w.pid}`,
    ),
  });
  t.false((await readdir(base)).includes('2'));
});

test("a process tracked alone earlier: the tree's pre-dump without tracking warns that it holds predump's uffd-wp tracking", async (t) => {
  const { w, procs } = await startTree(t);
  const leaf = procs[3]!.pid;
  const base = await tempDir(t);
  if (!(await trackAlone(t, leaf, path.join(base, 'alone')))) {
    t.pass();
    return;
  }
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'tree'),
    '--track-mem',
    'none',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.deepEqual(j.trackedAlone, [leaf]);
  t.regex(
    r.stderr,
    new RegExp(
      `process ${leaf} holds predump's uffd-wp tracking from an earlier pre-dump of it alone.*predump untrack -t ${leaf}`,
    ),
  );
  const u = await runCli(['untrack', '-t', String(leaf)]);
  t.is(u.code, 0, u.stderr);
  const again = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'tree2'),
    '--track-mem',
    'none',
    '--json',
  ]);
  t.deepEqual(parseJson<PreDumpResult>(t, again).trackedAlone, []);
});

// The tree's scan looks for a dead run's marker in every process on its scan threads and
// gives the marked ones to the tracer to clean before they are scanned (docs/TREES.md):
// a splice pre-dump of one process alone, killed once the process holds its pipes (the
// injection gate), leaves them there; the tree's pre-dump must remove them, say so, and
// write none of the scratch mapping's pages.
test("a dead run's leftovers in one process of the tree: removed before the scan, said, not dumped", async (t) => {
  const { w, procs } = await startTree(t);
  const leaf = procs[3]!.pid;
  const before = await snapshot(leaf);
  const base = await tempDir(t);
  const gate = path.join(base, 'gate');
  await mkfifo(gate);
  const cli = startCli(
    [
      'pre-dump',
      '-t',
      String(leaf),
      '-D',
      path.join(base, 'alone'),
      '--pre-dump-mode',
      'splice',
      '--track-mem',
      'none',
    ],
    { PREDUMP_TEST_INJECT_GATE: `splice-pipes-received:${gate}` },
  );
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const fh = await reachGate(gate, cli);
  cli.child.kill('SIGKILL');
  await cli.done;
  await fh.close();
  t.deepEqual(await heldThreads(leaf), [], 'the killed run held nothing');
  const left = leftoverDiff(before, await snapshot(leaf))[0];
  t.true(
    left.some((l) => l.startsWith('+')),
    `the killed run left its scratch mapping: ${left.join(', ')}`,
  );
  const dir = path.join(base, 'tree');
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    dir,
    '--track-mem',
    'none',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  t.regex(
    parseJson<PreDumpResult>(t, r).leftoversRemoved ?? '',
    new RegExp(`^predump's injection stub, 1 mapping and \\d+ fds \\(process ${leaf}\\)$`),
  );
  t.deepEqual(
    leftoverDiff(before, await snapshot(leaf))[0],
    [],
    'the leaf as before the killed run',
  );
  const pm = await readPagemap(path.join(dir, `pagemap-${leaf}.img`));
  for (const l of left.filter((l) => l.startsWith('+'))) {
    const [s, e] = l
      .slice(1)
      .split(/\s+/)[0]!
      .split('-')
      .map((x) => parseInt(x, 16));
    const inside = pm.entries.filter((x) => x.vaddr < e! && x.vaddr + x.nrPages * PAGE > s!);
    t.deepEqual(inside, [], `no page of the removed mapping ${l} in the image`);
  }
  for (const p of procs) await assertRunningUntraced(t, p.pid);
});

test('dump --leave-stopped of a tree: copied while all frozen, all left stopped, verify clean, tracking ended', async (t) => {
  const { w, procs } = await startTree(t);
  const pids = procs.map((p) => p.pid);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const leaf = procs[3]!.pid;
  const base = await tempDir(t);
  // One process tracked alone first (uffd-wp), as a user may have done before.
  const tracked = await trackAlone(t, leaf, path.join(base, 'alone'));
  const first = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '1'),
    '--track-mem',
    'none',
  ]);
  t.is(first.code, 0, first.stderr);
  const r = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '2'),
    '--prev-images-dir',
    '../1',
    '--leave-stopped',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult & { leftStopped: boolean; copiedWhileFrozen: boolean }>(t, r);
  t.true(j.leftStopped);
  // What happened when: the whole tree copied and synced while frozen (CRIU's meaning of
  // its stats-dump: memdump all the page work of the frozen window, memwrite part of it).
  t.true(j.copiedWhileFrozen);
  t.is(j.drainMBps, 0);
  const st = (await crit(path.join(base, '2', 'stats-dump'))).entries[0]!['dump'] as Record<
    string,
    number
  >;
  t.is(st['memdump_time'], Math.round(j.memdumpMs * 1000));
  t.is(st['memwrite_time'], Math.round(j.memwriteMs * 1000));
  t.true(
    st['memdump_time']! <= Math.round(j.stoppedWindowMs * 1000) + 2,
    'inside the frozen window',
  );
  t.true(st['memdump_time']! + 2 >= Math.round((j.scanMs + j.copyMs) * 1000), 'scan and copy');
  t.true(st['memwrite_time']! <= st['memdump_time']!, 'memwrite is a part of memdump');
  t.deepEqual(j.processes.map((p) => p.pid).sort(), [...pids].sort());
  // The leaf's tracking, made alone, is read by the dump (whose auto tracking is uffd-wp
  // here) and ended: none is left that the dump neither used nor ended.
  t.deepEqual(j.trackedAlone, []);
  t.is(j.trackBackend, tracked ? 'uffd-wp' : 'none');
  for (const pid of pids) {
    // The job stop lands as each process is let go: look again (bounded) until it shows.
    let s = await procState(pid);
    for (let i = 0; i < 500 && s?.state !== 'T'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      s = await procState(pid);
    }
    t.is(s?.state, 'T', `process ${pid} is left job-stopped`);
    t.is(s?.tracerPid, 0, `process ${pid} is untraced`);
  }
  // Nothing of predump is left: the tracking made alone was ended by the dump.
  const after = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '3'),
    '--json',
  ]);
  t.is(after.code, 0, after.stderr);
  t.deepEqual(parseJson<PreDumpResult>(t, after).trackedAlone, []);

  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, '2'), '--json']);
  t.is(v.code, 0, v.stderr);
  const vj = parseJson<{ ok: boolean; mismatches: number; sharedMemory: unknown[] }>(t, v);
  t.true(vj.ok);
  t.is(vj.mismatches, 0);
  t.true(vj.sharedMemory.length >= 2);
  const show = await runCli(['show', path.join(base, '2'), '--json']);
  t.is(parseJson<{ kind: string }>(t, show).kind, 'dump');
  const human = await runCli([
    'dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '4'),
    '--leave-stopped',
  ]);
  t.is(human.code, 0, human.stderr);
  t.regex(
    human.stderr,
    new RegExp(
      `the 4 processes of the tree of ${w.pid} are left stopped: 'kill -CONT ${j.processes.map((p) => p.pid).join(' ')}'`,
    ),
  );
  // `after` (auto) tracked the tree where the kernel can: this dump read that, and ended it.
  t.regex(
    human.stderr,
    new RegExp(
      `tracking ${tracked ? 'uffd-wp, read' : 'none'}, then ended: nothing of predump is left in the tree`,
    ),
  );
  signalAll(pids, 'SIGCONT');
  for (const pid of pids) await assertRunningUntraced(t, pid);
  t.true((await w.selfCheck()).ok);
});

test('a process that exits during the copy: a partial pre-dump, exit 3, naming it', async (t) => {
  const { w, procs } = await startTree(t);
  const tmp = await tempDir(t);
  const gate = path.join(tmp, 'gate');
  await mkfifo(gate);
  const victim = procs[3]!.pid; // a leaf: killing it takes no other process along
  const cli = startCli(['pre-dump', '-t', String(w.pid), '-D', path.join(tmp, 'img'), '--json'], {
    PREDUMP_TEST_DRAIN_GATE: gate,
  });
  // The processes are copied one after the other (in tree order, after the shared objects),
  // each reading one byte from the gate after its first buffer: the victim is killed while
  // the root's copy waits there. The gate stays open for writing until the CLI ends (the
  // bytes for the later copies wait in it).
  const fh = await reachGate(gate, cli);
  process.kill(victim, 'SIGKILL');
  await fh.write(Buffer.from('x'.repeat(procs.length)));
  const r = await cli.done;
  await fh.close();
  t.is(r.code, 3, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.true(j.partial);
  t.deepEqual(
    j.processes.filter((p) => p.partial).map((p) => p.pid),
    [victim],
  );
  t.regex(r.stderr, new RegExp(`process ${victim} exited during the copy`));
  for (const p of procs.filter((x) => x.pid !== victim)) await assertRunningUntraced(t, p.pid);
});

test("a tree whose root is the caller's own child, through the API: ECHILDTARGET, nothing frozen", async (t) => {
  // A shell with a child of its own: a tree of two, the root a direct child of this process.
  const sh = spawn('sh', ['-c', 'sleep 1000 & echo $!; wait'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.teardown(() => sh.kill('SIGKILL'));
  const sleeper = Number(
    await new Promise<string>((resolve) =>
      createInterface({ input: sh.stdout }).once('line', resolve),
    ),
  );
  t.teardown(() => process.kill(sleeper, 'SIGKILL'));
  const dir = path.join(await tempDir(t), 'img');
  const err = await t.throwsAsync(preDump({ pid: sh.pid!, imagesDir: dir }));
  t.is((err as PredumpError).code, 'ECHILDTARGET');
  t.regex(err!.message, new RegExp(`process ${sh.pid} is a child of this process`));
  t.false(existsSync(dir));
  await assertRunningUntraced(t, sh.pid!);
  await assertRunningUntraced(t, sleeper);
});

test('untrack -t ROOT ends the tracking in every process of the tree', async (t) => {
  const { w, procs } = await startTree(t);
  const base = await tempDir(t);
  const alone = [procs[2]!.pid, procs[3]!.pid];
  for (const pid of alone) {
    if (!(await trackAlone(t, pid, path.join(base, `alone-${pid}`)))) {
      t.pass();
      return;
    }
  }
  const u = await runCli(['untrack', '-t', String(w.pid), '--json']);
  t.is(u.code, 0, u.stderr);
  const j = parseJson<{ untracked: boolean; processes: { pid: number; untracked: boolean }[] }>(
    t,
    u,
  );
  t.true(j.untracked);
  t.deepEqual(j.processes.map((p) => p.pid).sort(), procs.map((p) => p.pid).sort());
  t.deepEqual(
    j.processes
      .filter((p) => p.untracked)
      .map((p) => p.pid)
      .sort(),
    [...alone].sort(),
  );
  // The same in words: one process tracked again, then untracked with the tree.
  const again1 = await runCli([
    'pre-dump',
    '-t',
    String(alone[0]),
    '-D',
    path.join(base, 'alone-again'),
    '--track-mem',
    'uffd-wp',
    '--pre-dump-mode',
    'read',
  ]);
  t.is(again1.code, 0, again1.stderr);
  const human = await runCli(['untrack', '-t', String(w.pid)]);
  t.is(human.code, 0, human.stderr);
  t.regex(human.stderr, new RegExp(`process ${alone[0]}: dirty tracking ended`));
  t.regex(
    human.stderr,
    new RegExp(`the tree of ${w.pid} \\(4 processes\\): nothing of predump is left`),
  );
  const after = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'tree'),
    '--track-mem',
    'none',
    '--json',
  ]);
  t.deepEqual(parseJson<PreDumpResult>(t, after).trackedAlone, []);
  const again = await runCli(['untrack', '-t', String(w.pid)]);
  t.is(again.code, 0, again.stderr);
  t.regex(again.stderr, /no process had dirty tracking of predump's/);
  for (const p of procs) await assertRunningUntraced(t, p.pid);
});
