/**
 * `pre-dump|dump -t ROOT --page-server` on a process tree: one connection, each process's
 * and each anonymous shared memory object's pagemap under its own id, to `predump
 * page-server` over loopback, real processes on both ends. A 2-step chain and a dump stored
 * on the server verify against the stopped tree page for page (the local -D keeping only
 * what CRIU's client keeps), crit decodes every image the server wrote, and a server that
 * goes away in the middle of the tree fails the run with exit 1, every process thawed and
 * untouched, no local images.
 */
import test, { type ExecutionContext } from 'ava';
import { constants, existsSync } from 'node:fs';
import { copyFile, open, readdir, readFile, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import type { PreDumpResult } from '../ts/predump.js';
import type { ReceivedPagemap } from '../ts/page-server.js';
import {
  assertCliError,
  assertRunningUntraced,
  computing,
  CRIT,
  crit,
  firstLine,
  holdAll,
  killAndWaitExit,
  leftoverDiff,
  MiB,
  mkfifo,
  parseJson,
  reachGate,
  release,
  runCli,
  snapshot,
  startCli,
  startWorkload,
  signalAll,
  startTree,
  tempDir,
  type RunningCli,
} from './helpers.js';

type T = ExecutionContext<unknown>;

interface Server {
  cli: RunningCli;
  port: number;
  dir: string;
  /** The server's result (exit 0 expected). */
  result(): Promise<{ pagemaps: ReceivedPagemap[]; pageBytes: number; sessionMs: number }>;
}

/** `predump page-server -D dir --port 0 --json ARGS`, once it listens. */
async function startServer(t: T, dir: string, args: string[] = []): Promise<Server> {
  const cli = startCli(['page-server', '-D', dir, '--address', '127.0.0.1', '--json', ...args]);
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const port = (JSON.parse(await firstLine(cli)) as { listening: { port: number } }).listening.port;
  return {
    cli,
    port,
    dir,
    async result() {
      const r = await cli.done;
      t.is(r.code, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as Awaited<
        ReturnType<Server['result']>
      >;
    },
  };
}

const client = (port: number): string[] => [
  '--page-server',
  '--address',
  '127.0.0.1',
  '--port',
  String(port),
  '--json',
];

/** What the server stored matches what the client says it sent, pagemap by pagemap. */
function assertStoredAsSent(t: T, j: PreDumpResult, stored: ReceivedPagemap[]): void {
  const procs = stored.filter((p) => p.kind === 'process');
  const objects = stored.filter((p) => p.kind === 'shmem');
  t.deepEqual(
    procs.map((p) => p.id),
    j.processes.map((p) => p.pid),
    'one pagemap per process, in tree order',
  );
  t.deepEqual(
    objects.map((p) => p.id).sort(),
    j.sharedMemory!.map((s) => s.shmid).sort(),
    'one pagemap per shared object',
  );
  for (const p of j.processes) {
    t.is(procs.find((x) => x.id === p.pid)!.pagesPresent, p.pagesWritten, `process ${p.pid}`);
  }
  for (const s of j.sharedMemory!) {
    t.is(objects.find((x) => x.id === s.shmid)!.pagesPresent, s.pagesWritten, `shmem ${s.shmid}`);
  }
  t.is(
    stored.reduce((n, p) => n + p.pagesParent, 0),
    j.pagesSkippedParent,
    'the holes sent are the pages left to the parent',
  );
}

test('a tree chain (2 pre-dumps, then a dump) streamed to predump page-server verifies against the stopped tree', async (t) => {
  const base = await tempDir(t);
  const { w, pids } = await startTree(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const step = async (n: number, cmd: string, extra: string[] = []) => {
    const server = await startServer(
      t,
      path.join(base, `ps${n}`),
      n > 1 ? ['--prev-images-dir', `../ps${n - 1}`] : [],
    );
    const r = await runCli([
      cmd,
      '-t',
      String(w.pid),
      '-D',
      path.join(base, `local${n}`),
      ...(n > 1 ? ['--prev-images-dir', `../local${n - 1}`] : []),
      ...extra,
      ...client(server.port),
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<PreDumpResult>(t, r);
    const res = await server.result();
    assertStoredAsSent(t, j, res.pagemaps);
    // The local directory holds what CRIU's client keeps, and predump's record.
    const want = ['inventory.img', 'predump-track.json', 'stats-dump'];
    if (n > 1) want.push('parent');
    t.deepEqual((await readdir(path.join(base, `local${n}`))).sort(), want.sort());
    t.like(j.pageServer, { port: server.port, format: 'criu-4.2', hasParent: n > 1 });
    return { j, res };
  };

  const one = await step(1, 'pre-dump');
  t.is(one.j.processes.length, 4);
  t.true(one.j.sharedMemory!.length >= 2);
  // Writes to one process's private memory and to a shared object between the two.
  await w.command('proc 3 dirty 100 11');
  await w.command('shared-dirty shared 100 7');
  signalAll(pids, 'SIGSTOP'); // nothing changes after this: verify is exact
  const two = await step(2, 'pre-dump');
  t.true(two.j.pagesSkippedParent > 0, 'unchanged pages were left to the parent on the server');
  // The chain's shared memory is on the server, where this side cannot compare it: whole.
  for (const s of two.j.sharedMemory!) {
    t.like(s, { inParent: 'page-server', pagesSkippedParent: 0, pagesCompared: 0 });
  }
  t.regex(two.j.trackNote ?? '', /anonymous shared memory is copied whole to a page server/);
  for (const p of two.res.pagemaps.filter((x) => x.kind === 'process')) {
    t.true(p.hasParent, `the server's parent holds process ${p.id}`);
  }
  t.true(
    two.j.pagesWritten < one.j.pagesWritten / 2,
    `${two.j.pagesWritten} pages sent again of ${one.j.pagesWritten}`,
  );
  t.is(await readlink(path.join(base, 'ps2', 'parent')), '../ps1');
  // The local half: show says where the pages went and what was sent; verify points there.
  const shown = await runCli(['show', path.join(base, 'local2'), '--json']);
  t.is(shown.code, 0, shown.stderr);
  t.like(parseJson(t, shown), {
    kind: 'pre-dump',
    pid: w.pid,
    pageServer: { address: '127.0.0.1' },
    pagesPresent: two.j.pagesWritten - two.j.sharedMemory!.reduce((n, s) => n + s.pagesWritten, 0),
    pagesInParent: two.j.pagesSkippedParent,
  });
  const human = await runCli(['show', path.join(base, 'local2'), '--no-entries']);
  t.regex(human.stdout, /pages sent to {2}the page server at 127\.0\.0\.1:\d+: the pagemaps/);
  t.regex(human.stdout, new RegExp(`pid ${w.pid} +on the server`));
  assertCliError(
    t,
    await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, 'local2'), '--json']),
    {
      exit: 1,
      code: 'EIMAGE',
      message: /holds the local half of a pre-dump sent to the page server at 127\.0\.0\.1:\d+/,
    },
  );

  // A local pre-dump of the same stopped tree, for comparison.
  const local = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'ref'),
    '--track-mem',
    'none',
    '--json',
  ]);
  t.is(local.code, 0, local.stderr);
  const ref = parseJson<PreDumpResult>(t, local);
  for (const s of ref.sharedMemory!) {
    const sent = two.j.sharedMemory!.find((x) => x.shmid === s.shmid);
    t.is(sent?.pagesWritten, s.pagesWritten, `shared object ${s.shmid}: as many pages`);
  }
  t.is(
    two.res.pagemaps.filter((p) => p.kind === 'process').length,
    ref.processes.length,
    'as many process pagemaps',
  );

  // The server's chain, with the client's inventory beside it (what a migration copies over),
  // is the tree's memory.
  const verify = async (n: number) => {
    for (let i = 1; i <= n; i++) {
      await copyFile(
        path.join(base, `local${i}`, 'inventory.img'),
        path.join(base, `ps${i}`, 'inventory.img'),
      );
    }
    const dir = path.join(base, `ps${n}`);
    const v = await runCli(['verify', '-t', String(w.pid), '-D', dir, '--json']);
    t.is(v.code, 0, v.stderr);
    const vj = parseJson<{
      ok: boolean;
      mismatches: number;
      missing: number;
      pagesCompared: number;
    }>(t, v);
    t.like(vj, { ok: true, mismatches: 0, missing: 0 }, dir);
    t.true(vj.pagesCompared >= ref.pagesWritten, `${dir}: ${vj.pagesCompared} pages compared`);
  };
  await verify(2);

  // The dump closes the chain on the server, the tree left stopped.
  signalAll(pids, 'SIGCONT');
  const three = await step(3, 'dump', ['--leave-stopped']);
  t.is(three.j.processes.length, 4);
  await verify(3);
  if (CRIT) {
    for (const dir of ['ps1', 'ps2', 'ps3']) {
      for (const n of (await readdir(path.join(base, dir))).filter((f) =>
        f.startsWith('pagemap-'),
      )) {
        t.truthy((await crit(path.join(base, dir, n))).magic, `${dir}/${n}`);
      }
    }
  }
  signalAll(pids, 'SIGCONT');
  for (const pid of pids) await assertRunningUntraced(t, pid);

  // Its pages are on the server: a local pre-dump cannot build on it.
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'local4'),
    '--prev-images-dir',
    '../local2',
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'EPARENT',
    message: /were sent to a page server: their pages are not on this host/,
  });
  t.false(existsSync(path.join(base, 'local4')));
  const record = JSON.parse(
    await readFile(path.join(base, 'local2', 'predump-track.json'), 'utf8'),
  ) as { pageServer: { processes: { pid: number; entries: number[] }[] } };
  t.deepEqual(
    record.pageServer.processes.map((p) => p.pid),
    two.j.processes.map((p) => p.pid),
  );
});

test('the page server going away in the middle of a tree: exit 1, every process thawed and untouched, no local images', async (t) => {
  const base = await tempDir(t);
  const { w, pids } = await startTree(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const server = await startServer(t, path.join(base, 'ps'));
  const gate = path.join(base, 'gate');
  await mkfifo(gate);
  const local = path.join(base, 'local');
  // The drain of the first process stops at the gate once part of its pages are sent (the
  // shared objects went before): the server is killed there.
  const cli = startCli(['pre-dump', '-t', String(w.pid), '-D', local, ...client(server.port)], {
    PREDUMP_TEST_DRAIN_GATE: gate,
  });
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const fh = await reachGate(gate, cli);
  try {
    server.cli.child.kill('SIGKILL');
    await server.cli.done;
    await fh.write(Buffer.from('x'));
  } finally {
    await fh.close();
  }
  const r = await cli.done;
  assertCliError(t, r, {
    exit: 1,
    code: 'ECONN',
    message: /to the page server at 127\.0\.0\.1:\d+: the page server closed the connection/,
  });
  t.false(existsSync(local), 'the local images were removed');
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    t.deepEqual(await snapshot(pid), before[i], `nothing of ours is left in process ${pid}`);
  }
  const kept = (await readdir(path.join(base, 'ps'))).filter((f) => !f.startsWith('.'));
  t.deepEqual(kept, [], 'the killed server left nothing that looks complete');
});

test('a page server without the parent images: every process of the tree is sent whole, and the note says why', async (t) => {
  const base = await tempDir(t);
  const { w, pids } = await startTree(t);
  const first = await startServer(t, path.join(base, 'ps1'));
  let r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'local1'),
    ...client(first.port),
  ]);
  t.is(r.code, 0, r.stderr);
  await first.result();
  // The second server was not given --prev-images-dir: it holds no parent.
  const second = await startServer(t, path.join(base, 'ps2'));
  r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'local2'),
    '--prev-images-dir',
    '../local1',
    ...client(second.port),
  ]);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  const res = await second.result();
  assertStoredAsSent(t, j, res.pagemaps);
  t.is(j.pagesSkippedParent, 0);
  t.like(j.pageServer, { hasParent: false });
  t.true(res.pagemaps.every((p) => !p.hasParent && p.pagesParent === 0));
  t.regex(
    j.trackNote ?? '',
    new RegExp(
      `the page server at 127\\.0\\.0\\.1:${second.port} holds no parent images \\(its --prev-images-dir\\) ` +
        `of processes ${[...pids].sort((a, b) => a - b).join(', ')}: every page of them is copied`,
    ),
  );
  for (const pid of pids) await assertRunningUntraced(t, pid);
});

// ---- freeze-free mode ------------------------------------------------------------------------

const freezeFree = ['--pre-dump-mode', 'freeze-free'];

/**
 * The server's directory holds what a local freeze-free pre-dump of the tree writes: a pagemap
 * and a pages image per process and per shared object, opened in the order the local run
 * writes them (the shared objects first, then the processes in tree order: the server numbers
 * the pages images in that order, from its own first id), and the parent link.
 */
async function assertImagesAsLocal(
  t: T,
  j: PreDumpResult,
  server: Server,
  stored: ReceivedPagemap[],
  parent?: string,
): Promise<void> {
  t.deepEqual(
    stored.map((p) => `${p.kind} ${p.id}`),
    [
      ...j.sharedMemory!.map((s) => `shmem ${s.shmid}`),
      ...j.processes.map((p) => `process ${p.pid}`),
    ],
    'the shared objects first, then the processes in tree order',
  );
  const ids = stored.map((p) => Number(/^pages-(\d+)\.img$/.exec(p.pagesFile)?.[1]));
  t.deepEqual(
    ids,
    ids.map((_, i) => ids[0]! + i),
    'pages images numbered in that order',
  );
  const want = stored.flatMap((p) => [p.pagemapFile, p.pagesFile]);
  for (const s of j.sharedMemory!) t.true(want.includes(`pagemap-shmem-${s.shmid}.img`));
  for (const p of j.processes) t.true(want.includes(`pagemap-${p.pid}.img`));
  if (parent) {
    want.push('parent');
    t.is(await readlink(path.join(server.dir, 'parent')), parent);
  }
  t.deepEqual((await readdir(server.dir)).sort(), want.sort(), server.dir);
}

/**
 * Waits until predump page-server's `dir` holds the temporary pagemap of one of `pids` (its
 * PS_IOV_OPEN2 received) and, with `pages`, page data for it (the newest pages image's); false
 * if it does not come within 20 s.
 */
async function serverReceiving(dir: string, pids: number[], pages: boolean): Promise<boolean> {
  const map = new RegExp(`^\\.pagemap-(${pids.join('|')})\\.img\\.`);
  const id = (f: string): number => Number(/^\.pages-(\d+)\.img\./.exec(f)?.[1] ?? -1);
  for (let i = 0; i < 4000; i++) {
    const names = await readdir(dir).catch(() => [] as string[]);
    if (names.some((f) => map.test(f))) {
      if (!pages) return true;
      const newest = names.filter((f) => id(f) >= 0).sort((a, b) => id(b) - id(a))[0];
      const size = newest
        ? ((await stat(path.join(dir, newest)).catch(() => undefined))?.size ?? 0)
        : 0;
      if (size > 0) return true;
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return false;
}

test('freeze-free on a tree of 4 sharing memory, streamed to predump page-server: a chain of 2 (the second stopping nothing) and a dump verify, nothing left in any process', async (t) => {
  const base = await tempDir(t);
  const { w, procs, pids } = await startTree(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const step = async (n: number, cmd: string, extra: string[]) => {
    const server = await startServer(
      t,
      path.join(base, `ps${n}`),
      n > 1 ? ['--prev-images-dir', `../ps${n - 1}`] : [],
    );
    const r = await runCli([
      cmd,
      '-t',
      String(w.pid),
      '-D',
      path.join(base, `local${n}`),
      ...(n > 1 ? ['--prev-images-dir', `../local${n - 1}`] : []),
      ...extra,
      ...client(server.port),
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<PreDumpResult>(t, r);
    const res = await server.result();
    assertStoredAsSent(t, j, res.pagemaps);
    await assertImagesAsLocal(t, j, server, res.pagemaps, n > 1 ? `../ps${n - 1}` : undefined);
    // The local directory holds what CRIU's client keeps, and predump's record.
    const want = ['inventory.img', 'predump-track.json', 'stats-dump'];
    if (n > 1) want.push('parent');
    t.deepEqual((await readdir(path.join(base, `local${n}`))).sort(), want.sort());
    t.like(j.pageServer, { port: server.port, hasParent: n > 1 });
    return { j, res };
  };

  // The first run makes each process's tracking (each stopped once, alone, for it).
  const one = await step(1, 'pre-dump', freezeFree);
  t.like(one.j, { mode: 'freeze-free', trackBackend: 'uffd-wp', partial: false });
  t.is(one.j.processes.length, 4);
  t.true(one.j.sharedMemory!.length >= 2, 'the shared objects are sent');
  t.true(one.j.stoppedWindowMs > 0);

  // Writes in a process's private memory and in a shared object; then the second run while
  // another tracer holds every process: predump could stop none of them, and needs not.
  await w.command('proc 3 dirty 100 31');
  await w.command('shared-dirty shared 100 7');
  const holder = await holdAll(t, pids);
  const two = await step(2, 'pre-dump', freezeFree);
  t.like(two.j, { mode: 'freeze-free', trackBackend: 'uffd-wp', stoppedWindowMs: 0 });
  t.is(two.j.freezingMs, 0);
  t.true(two.j.pagesSkippedParent > 0, 'unchanged pages were left to the parent on the server');
  for (const p of two.res.pagemaps.filter((x) => x.kind === 'process')) {
    t.true(p.hasParent, `the server's parent holds process ${p.id}`);
  }
  for (const p of procs) {
    const a = one.j.processes.find((x) => x.pid === p.pid)!.pagesWritten;
    const b = two.j.processes.find((x) => x.pid === p.pid)!.pagesWritten;
    t.true(b < a / 3, `process ${p.pid}: ${b} pages sent again of ${a}`);
  }
  const wrote = two.j.processes.find((x) => x.pid === procs[3]!.pid)!.pagesWritten;
  t.true(wrote >= 100, `process 3 wrote ${wrote} pages (100 dirtied)`);
  // The chain's shared memory is on the server: each object is sent whole, as in read mode.
  for (const s of two.j.sharedMemory!) t.like(s, { inParent: 'page-server', pagesCompared: 0 });
  t.true(await computing(w), 'the tree computed on while held');
  await release(holder);

  // The dump closes the chain on the server (the whole tree frozen, the tracking read and
  // ended), the tree left stopped: the server's chain is the tree's memory.
  await w.command('proc 1 dirty 50 32');
  const three = await step(3, 'dump', ['--leave-stopped']);
  t.is(three.j.trackBackend, 'uffd-wp', "the chain's tracking was read");
  t.true(three.j.pagesSkippedParent > 0, 'the dump leaves unchanged pages to the chain');
  for (let i = 1; i <= 3; i++) {
    await copyFile(
      path.join(base, `local${i}`, 'inventory.img'),
      path.join(base, `ps${i}`, 'inventory.img'),
    );
  }
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, 'ps3'), '--json']);
  t.is(v.code, 0, v.stderr);
  t.like(parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v), {
    ok: true,
    mismatches: 0,
    missing: 0,
  });
  if (CRIT) {
    for (const dir of ['ps1', 'ps2', 'ps3']) {
      for (const n of (await readdir(path.join(base, dir))).filter((f) =>
        f.startsWith('pagemap-'),
      )) {
        t.truthy((await crit(path.join(base, dir, n))).magic, `${dir}/${n}`);
      }
    }
  }
  signalAll(pids, 'SIGCONT');
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left`);
  }
  t.true((await w.selfCheck()).ok);
});

test('freeze-free on a tree to a page server that refuses the connection: exit 1, nothing touched, no local images', async (t) => {
  const base = await tempDir(t);
  const { w, pids } = await startTree(t);
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  const local = path.join(base, 'local');
  // Nothing listens on port 1.
  const r = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    local,
    ...freezeFree,
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    '1',
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'ECONN',
    message: /connecting to the page server at 127\.0\.0\.1:1: Connection refused/,
  });
  t.false(existsSync(local), 'no local images');
  for (const [i, pid] of pids.entries()) {
    await assertRunningUntraced(t, pid);
    t.deepEqual(await snapshot(pid), before[i], `nothing of ours in process ${pid}`);
  }
});

test('freeze-free on a tree: the page server going away in the middle, on the first run and on the chain: exit 1, every process thawed, untraced, holding only the tracking the chain keeps', async (t) => {
  const base = await tempDir(t);
  const { w, pids } = await startTree(t);
  t.teardown(() => runCli(['untrack', '-t', String(w.pid)]));
  const before = await Promise.all(pids.map((pid) => snapshot(pid)));
  // The server is killed once the second process's pagemap is open on it (the shared
  // objects and the first process went before): the drains wait at the gate (held open
  // here, read and written: each drain takes one byte) until then.
  const failing = async (name: string, prev?: string) => {
    const server = await startServer(t, path.join(base, `ps-${name}`));
    const gate = path.join(base, `gate-${name}`);
    await mkfifo(gate);
    const hold = await open(gate, constants.O_RDWR);
    const local = path.join(base, name);
    const cli = startCli(
      [
        'pre-dump',
        '-t',
        String(w.pid),
        '-D',
        local,
        ...(prev ? ['--prev-images-dir', prev] : []),
        ...freezeFree,
        ...client(server.port),
      ],
      { PREDUMP_TEST_DRAIN_GATE: gate },
    );
    t.teardown(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    await hold.write(Buffer.from('x'));
    const others = pids.filter((p) => p !== w.pid);
    t.true(await serverReceiving(server.dir, others, false), "the second process's pagemap");
    server.cli.child.kill('SIGKILL');
    await server.cli.done;
    await hold.write(Buffer.from('x'.repeat(pids.length)));
    const r = await cli.done;
    await hold.close();
    assertCliError(t, r, {
      exit: 1,
      code: 'ECONN',
      message: /to the page server at 127\.0\.0\.1:\d+: the page server closed the connection/,
    });
    t.false(existsSync(local), 'the local images were removed');
    const kept = (await readdir(path.join(base, `ps-${name}`))).filter((f) => !f.startsWith('.'));
    t.deepEqual(kept, [], 'the killed server left nothing that looks complete');
    for (const pid of pids) await assertRunningUntraced(t, pid);
  };

  // The first run: the tracking it made in the processes before the failure is ended again.
  await failing('first');
  for (const [i, pid] of pids.entries()) {
    t.deepEqual(await snapshot(pid), before[i], `nothing of ours in process ${pid}`);
  }

  // A chain: one run that succeeds, then one that fails. The tracking the chain keeps stays
  // (the next run copies every page: no images hold the failed run's arming), nothing else.
  const server = await startServer(t, path.join(base, 'ps1'));
  const ok = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, 'local1'),
    ...freezeFree,
    ...client(server.port),
  ]);
  t.is(ok.code, 0, ok.stderr);
  await server.result();
  const tracked = await Promise.all(pids.map((pid) => snapshot(pid)));
  await failing('second', '../local1');
  for (const [i, pid] of pids.entries()) {
    t.deepEqual(await snapshot(pid), tracked[i], `process ${pid}: only the chain's tracking`);
  }
  const u = await runCli(['untrack', '-t', String(w.pid)]);
  t.is(u.code, 0, u.stderr);
  for (const [i, pid] of pids.entries()) {
    const [diff] = leftoverDiff(before[i]!, await snapshot(pid));
    t.deepEqual(diff, [], `process ${pid}: nothing of predump left after untrack`);
  }
});

test('freeze-free on a tree to a page server: a process that exits during its copy makes a partial pre-dump, exit 3, naming it', async (t) => {
  const base = await tempDir(t);
  const { w, procs, pids } = await startTree(t);
  t.teardown(() => runCli(['untrack', '-t', String(w.pid)]));
  // A first run (locally) makes the tracking and gives the order the processes are copied in.
  const first = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '1'),
    ...freezeFree,
    '--json',
  ]);
  t.is(first.code, 0, first.stderr);
  const order = parseJson<PreDumpResult>(t, first).processes.map((p) => p.pid);
  const server = await startServer(t, path.join(base, 'ps'));
  // The drains wait at the gate (held open here, read and written: each drain takes one
  // byte): the earlier processes pass, the victim (a leaf) is killed while its own copy waits
  // there, its first buffer sent (without a parent every page is sent again: more than that).
  const victim = procs[3]!.pid;
  const gate = path.join(base, 'gate');
  await mkfifo(gate);
  const hold = await open(gate, constants.O_RDWR);
  const cli = startCli(
    [
      'pre-dump',
      '-t',
      String(w.pid),
      '-D',
      path.join(base, '2'),
      ...freezeFree,
      ...client(server.port),
    ],
    { PREDUMP_TEST_DRAIN_GATE: gate },
  );
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  await hold.write(Buffer.from('x'.repeat(order.indexOf(victim))));
  t.true(await serverReceiving(server.dir, [victim], true), "the victim's first pages are sent");
  // Exited before the gate opens, or the rest of its copy could be read before its SIGKILL
  // takes effect (exit 0 instead of 3, seen at load 40).
  await killAndWaitExit(victim);
  await hold.write(Buffer.from('x'.repeat(order.length)));
  const r = await cli.done;
  await hold.close();
  t.is(r.code, 3, r.stderr);
  const j = parseJson<PreDumpResult>(t, r);
  t.true(j.partial);
  t.deepEqual(
    j.processes.filter((p) => p.partial).map((p) => p.pid),
    [victim],
  );
  t.regex(r.stderr, new RegExp(`process ${victim} exited during the copy`));
  const res = await server.result();
  assertStoredAsSent(t, j, res.pagemaps);
  for (const pid of pids.filter((p) => p !== victim)) await assertRunningUntraced(t, pid);
});

test("a single process's anonymous shared memory, freeze-free to a page server: written as a tree of one's (pagemap-shmem images on the server), a chain and a dump verify", async (t) => {
  const base = await tempDir(t);
  const { w } = await startWorkload(t, {
    sizeBytes: 1 * MiB,
    threads: 1,
    sharedBytes: 1 * MiB,
    devzeroBytes: 512 * 1024,
  });
  const before = await snapshot(w.pid);
  const step = async (n: number, cmd: string, extra: string[]) => {
    const server = await startServer(
      t,
      path.join(base, `ps${n}`),
      n > 1 ? ['--prev-images-dir', `../ps${n - 1}`] : [],
    );
    const r = await runCli([
      cmd,
      '-t',
      String(w.pid),
      '-D',
      path.join(base, `local${n}`),
      ...(n > 1 ? ['--prev-images-dir', `../local${n - 1}`] : []),
      ...extra,
      ...client(server.port),
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<PreDumpResult>(t, r);
    const res = await server.result();
    assertStoredAsSent(t, j, res.pagemaps);
    return j;
  };
  for (const n of [1, 2]) {
    const j = await step(n, 'pre-dump', freezeFree);
    t.like(j, { mode: 'freeze-free', trackBackend: 'uffd-wp' });
    t.deepEqual(
      j.processes.map((p) => p.pid),
      [w.pid],
    );
    const shmids = j.sharedMemory!.map((s) => s.shmid);
    for (const a of [w.shared!, w.devzero!]) {
      t.true(shmids.includes(a.inode), `object ${a.inode} is sent`);
      t.true(existsSync(path.join(base, `ps${n}`, `pagemap-shmem-${a.inode}.img`)));
    }
    t.false(
      j.notPreDumped.some((x) => x.kind === 'shmem'),
      'no shared memory skipped',
    );
    if (n === 2) t.is(j.stoppedWindowMs, 0);
    await w.command('shared-dirty shared 10 3');
  }
  process.kill(w.pid, 'SIGSTOP');
  t.teardown(() => signalAll([w.pid], 'SIGCONT'));
  await step(3, 'dump', ['--leave-stopped']);
  for (let i = 1; i <= 3; i++) {
    await copyFile(
      path.join(base, `local${i}`, 'inventory.img'),
      path.join(base, `ps${i}`, 'inventory.img'),
    );
  }
  const v = await runCli(['verify', '-t', String(w.pid), '-D', path.join(base, 'ps3'), '--json']);
  t.is(v.code, 0, v.stderr);
  t.like(parseJson<{ ok: boolean; mismatches: number; missing: number }>(t, v), {
    ok: true,
    mismatches: 0,
    missing: 0,
  });
  process.kill(w.pid, 'SIGCONT');
  await assertRunningUntraced(t, w.pid);
  t.deepEqual(leftoverDiff(before, await snapshot(w.pid))[0], [], 'nothing of predump left');
});
