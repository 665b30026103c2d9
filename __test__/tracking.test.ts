/**
 * Dirty tracking against a changing target: the freeze-free path (the default
 * with uffd-wp) and the frozen read mode with uffd-wp, and read mode with
 * soft-dirty, each through iterations of pre-dumps while the target writes, maps,
 * unmaps, mprotects, zaps, starts threads and forks; then `dump --leave-stopped`,
 * and the chain compared page by page with /proc/PID/mem (independently of
 * predump's verify, which must agree).
 *
 * Each kernel runs the kinds it has: the host's (no soft-dirty) the uffd-wp ones,
 * Debian's 6.1 the soft-dirty one, 6.12 all three (the VM harness runs the
 * soft-dirty ones there: .ci/vm-scenarios/ava-soft-dirty.sh).
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { native } from '../ts/native.js';
import { preDump, type PreDumpResult } from '../ts/predump.js';
import type { Workload } from '../ts/workload.js';
import {
  MiB,
  PAGE,
  assertCliError,
  assertRunningUntraced,
  compareChainWithMemory,
  mkfifo,
  parseJson,
  reachGate,
  runCli,
  snapshot,
  startCli,
  startTree,
  startWorkload,
  tempDir,
  type Target,
} from './helpers.js';

type Mode = 'freeze-free' | 'read';
type Track = 'uffd-wp' | 'soft-dirty';
interface Kind {
  mode: Mode;
  track: Track;
  /** In test titles: the mode, and the tracking unless uffd-wp. */
  name: string;
}

const supported = new Set(
  (await native.checkKernel()).capabilities.filter((c) => c.supported).map((c) => c.name),
);
const KINDS: Kind[] = (
  [
    { mode: 'freeze-free', track: 'uffd-wp', name: 'freeze-free' },
    { mode: 'read', track: 'uffd-wp', name: 'read' },
    { mode: 'read', track: 'soft-dirty', name: 'read, soft-dirty' },
  ] as const
).filter((k) => supported.has(k.track));

/**
 * A chain of pre-dumps of one target, of one kind, closed by `dump --leave-stopped`. Its
 * methods assert (the tests' titles say what): `preDumpTrusted` that each pre-dump used the
 * kind asked for and trusted its parent, `dumpAndCompare` that the final dump left pages to
 * the chain and that the chain equals the stopped target's memory.
 */
class Chain {
  readonly dirs: string[] = [];
  readonly results: PreDumpResult[] = [];
  constructor(
    private readonly t: ExecutionContext,
    private readonly target: Target,
    private readonly tmp: string,
    private readonly kind: Kind,
  ) {
    // Whatever happens, the target runs on untracked (then its teardown stops it).
    t.teardown(async () => {
      try {
        process.kill(target.pid, 'SIGCONT');
      } catch {
        return; // gone
      }
      await runCli(['untrack', '-t', String(target.pid)]);
    });
  }

  async preDumpTrusted(): Promise<PreDumpResult> {
    const dir = path.join(this.tmp, `pre-${this.dirs.length}`);
    const r = await preDump({
      pid: this.target.pid,
      imagesDir: dir,
      mode: this.kind.mode,
      trackMem: this.kind.track,
      prevImagesDir: this.dirs.at(-1),
    });
    this.t.is(r.mode, this.kind.mode);
    this.t.is(r.trackBackend, this.kind.track);
    if (this.dirs.length > 0) {
      this.t.is(r.trackNote, null, 'the chain is trusted');
      if (this.kind.mode === 'freeze-free') this.t.is(r.stoppedWindowMs, 0, 'never stopped');
    }
    this.dirs.push(dir);
    this.results.push(r);
    return r;
  }

  /** The final dump, then the chain against the stopped target's memory. */
  async dumpAndCompare(): Promise<void> {
    const { t, target } = this;
    const final = path.join(this.tmp, 'final');
    const r = await runCli([
      'dump',
      '-t',
      String(target.pid),
      '-D',
      final,
      '--prev-images-dir',
      this.dirs.at(-1)!,
      '--track-mem',
      this.kind.track,
      '--leave-stopped',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    const dumped = parseJson<{ trackNote: string | null; pagesSkippedParent: number }>(t, r);
    t.is(dumped.trackNote, null);
    t.true(dumped.pagesSkippedParent > 0, 'the final dump leaves unchanged pages to the chain');
    const mine = await compareChainWithMemory(final, target.pid);
    if (mine.mismatches.length > 0) {
      // Say where: the mapping of each mismatching page.
      const maps = await readFile(`/proc/${target.pid}/maps`, 'utf8');
      for (const a of mine.mismatches) {
        const line = maps.split('\n').find((l) => {
          const [lo, hi] = l
            .split(' ')[0]!
            .split('-')
            .map((x) => parseInt(x, 16));
          return lo! <= a && a < hi!;
        });
        t.log(`mismatch at 0x${a.toString(16)} in ${line}`);
      }
      t.log(this.results.map((r) => `${r.pagesWritten}/${r.pagesSkippedParent}`).join(' '));
    }
    t.true(mine.pages > 0);
    t.deepEqual(
      mine.mismatches.map((a) => `0x${a.toString(16)}`),
      [],
      'every page of the chain equals the memory',
    );
    const v = await runCli(['verify', '-t', String(target.pid), '-D', final, '--json']);
    t.is(v.code, 0, v.stdout + v.stderr);
    t.like(parseJson(t, v), { ok: true, mismatches: 0, missing: 0 });
  }
}

async function setup(
  t: ExecutionContext,
  kind: Kind,
  options: Parameters<typeof startWorkload>[1] = { sizeBytes: 4 * MiB, threads: 0 },
): Promise<{ target: Target; w: Workload; chain: Chain }> {
  const target = await startWorkload(t, options);
  const chain = new Chain(t, target, await tempDir(t), kind);
  return { target, w: target.w, chain };
}

for (const kind of KINDS) {
  const mode = kind.name;
  test.serial(
    `${mode}: 10 pre-dumps of a target writing all the time, each trusting its parent, then dump: the chain is the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind, {
        sizeBytes: 16 * MiB,
        threads: 1,
        writerBytes: 8 * MiB,
      });
      const before = await w.progress();
      for (let i = 0; i < 10; i++) {
        await chain.preDumpTrusted();
        await w.dirty(20 + i * 5, 300 + i);
      }
      const after = await w.progress();
      t.true(after.writerWrites > before.writerWrites, 'the writer wrote throughout');
      // Incremental pre-dumps copy what changed, not everything again.
      const first = chain.results[0]!.pagesWritten;
      for (const r of chain.results.slice(1)) t.true(r.pagesWritten < first);
      await chain.dumpAndCompare();
    },
  );

  test.serial(
    `${mode}: new and removed mappings, an address reused; pre-dumps trust their parents, the dumped chain equals the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind);
      const a = await w.map(64, 1);
      await chain.preDumpTrusted();
      const b = await w.map(32, 2);
      await w.unmap(a.start + 16 * PAGE, 16);
      await chain.preDumpTrusted();
      // A new mapping in the hole: same addresses as pages the parent holds.
      await w.write(a.start, 4, 3);
      const c = await w.map(16, 4);
      await w.write(b.start + PAGE, 2, 5);
      await chain.preDumpTrusted();
      t.true(c.start > 0);
      await chain.dumpAndCompare();
    },
  );

  test.serial(
    `${mode}: mprotect changes between pre-dumps; pre-dumps trust their parents, the dumped chain equals the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind);
      const a = await w.map(64, 1);
      await chain.preDumpTrusted();
      await w.protect(a.start, 16, 'none');
      await w.protect(a.start + 16 * PAGE, 16, 'r');
      await chain.preDumpTrusted();
      await w.protect(a.start, 16, 'rw');
      await w.write(a.start + 4 * PAGE, 2, 6);
      await w.write(a.start + 40 * PAGE, 2, 7);
      await chain.preDumpTrusted();
      await w.protect(a.start + 16 * PAGE, 16, 'rw');
      await w.write(a.start + 20 * PAGE, 1, 8);
      await chain.dumpAndCompare();
    },
  );

  test.serial(
    `${mode}: pages zapped with MADV_DONTNEED, some written again; pre-dumps trust their parents, the dumped chain equals the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind);
      const a = await w.map(64, 1);
      await chain.preDumpTrusted();
      await w.dontneed(a.start, 32);
      await chain.preDumpTrusted();
      await w.write(a.start + 8 * PAGE, 4, 9);
      await w.dontneed(a.start + 48 * PAGE, 8);
      await chain.preDumpTrusted();
      await w.dontneed(a.start + 8 * PAGE, 2);
      await chain.dumpAndCompare();
    },
  );

  test.serial(
    `${mode}: threads created between pre-dumps; pre-dumps trust their parents, the dumped chain equals the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind);
      await chain.preDumpTrusted();
      const one = await w.thread(32, 1);
      await chain.preDumpTrusted();
      const two = await w.thread(16, 2);
      await w.write(one.area.start, 8, 3);
      const r = await chain.preDumpTrusted();
      t.true(r.threads >= 3, `${r.threads} threads`);
      t.not(one.tid, two.tid);
      await chain.dumpAndCompare();
    },
  );

  test.serial(
    `${mode}: a fork between pre-dumps; pre-dumps trust their parents, the dumped chain equals the memory`,
    async (t) => {
      const { w, chain } = await setup(t, kind);
      const a = await w.map(64, 1);
      await chain.preDumpTrusted();
      // The child rewrites its copies; the parent then writes some of its own.
      const child = await w.fork(a.start, 32, 2);
      t.teardown(() => {
        try {
          process.kill(child, 'SIGKILL');
        } catch {
          // gone
        }
      });
      await w.write(a.start + 16 * PAGE, 16, 3);
      await chain.preDumpTrusted();
      await w.write(a.start, 4, 4);
      await chain.preDumpTrusted();
      await chain.dumpAndCompare();
    },
  );
}

test.serial('a target killed between pre-dumps: a clear error, nothing written', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0 });
  const tmp = await tempDir(t);
  const d1 = path.join(tmp, '1');
  await preDump({ pid: target.pid, imagesDir: d1 });
  await target.kill();
  const r = await runCli([
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    path.join(tmp, '2'),
    '--prev-images-dir',
    d1,
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'ESRCH',
    message: new RegExp(`no such process: ${target.pid}`),
  });
});

test.serial('a second run while one works on the target: refused at once (EBUSY)', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 0 });
  const tmp = await tempDir(t);
  t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
  await preDump({ pid: target.pid, imagesDir: path.join(tmp, 'first') });
  // The first run holds the lock while it waits at the drain gate (freeze-free:
  // the target runs meanwhile, so nothing but the lock keeps a second run out).
  const gate = path.join(tmp, 'gate');
  await mkfifo(gate);
  const first = startCli(
    ['pre-dump', '-t', String(target.pid), '-D', path.join(tmp, 'held'), '--json'],
    { PREDUMP_TEST_DRAIN_GATE: gate },
  );
  t.teardown(() => {
    if (first.child.exitCode === null) first.child.kill('SIGKILL');
  });
  const fh = await reachGate(gate, first);
  try {
    for (const args of [
      ['pre-dump', '-D', path.join(tmp, 'second')],
      ['pre-dump', '--pre-dump-mode', 'read', '-D', path.join(tmp, 'third')],
      ['dump', '-D', path.join(tmp, 'final')],
      ['untrack'],
    ]) {
      assertCliError(t, await runCli([...args, '-t', String(target.pid), '--json']), {
        exit: 1,
        code: 'EBUSY',
        message: new RegExp(`another predump is working on process ${target.pid} right now`),
      });
    }
    await fh.write(Buffer.from('x'));
  } finally {
    await fh.close();
  }
  const r = await first.done;
  t.is(r.code, 0, r.stderr);
  // Released with its holder: the next run goes ahead.
  await preDump({ pid: target.pid, imagesDir: path.join(tmp, 'after') });
});

test.serial(
  'a target that ignores SIGTRAP is tracked like any other (injection raises no SIGTRAP)',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0, ignoreSigtrap: true });
    const tmp = await tempDir(t);
    const r = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      path.join(tmp, 'a'),
      '--track-mem',
      'uffd-wp',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<{ trackBackend: string }>(t, r);
    t.like(j, { trackBackend: 'uffd-wp' });
    const u = await runCli(['untrack', '-t', String(target.pid), '--json']);
    t.is(u.code, 0, u.stderr);
    t.like(parseJson(t, u), { ok: true, untracked: true });
    await assertRunningUntraced(t, target.pid);
  },
);

// A kernel without soft-dirty bits accepts clear_refs 4 and never sets bit 55: every page
// would look unwritten, and a pre-dump on its parent would leave the written pages to it.
// So soft-dirty asked for by name is refused there, before the target is touched; where it
// works, it is taken.
test('--track-mem soft-dirty: refused where the kernel keeps no soft-dirty bits, used where it does', async (t) => {
  const one = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 1 });
  const { w: tree, pids } = await startTree(t);
  const tmp = await tempDir(t);
  for (const [name, pid, all] of [
    ['one process', one.pid, [one.pid]],
    ['a tree', tree.pid, pids],
  ] as const) {
    const before = await Promise.all(all.map((p) => snapshot(p)));
    const dir = path.join(tmp, name);
    const r = await runCli([
      'pre-dump',
      '-t',
      String(pid),
      '-D',
      dir,
      '--track-mem',
      'soft-dirty',
      '--json',
    ]);
    if (supported.has('soft-dirty')) {
      t.is(r.code, 0, r.stderr);
      t.like(parseJson<{ trackBackend: string }>(t, r), { trackBackend: 'soft-dirty' }, name);
      continue;
    }
    assertCliError(t, r, {
      exit: 1,
      code: 'EINVAL',
      message:
        /soft-dirty tracking does not work on this kernel \(.*CONFIG_MEM_SOFT_DIRTY.*\): use --track-mem uffd-wp, auto or none/,
    });
    t.false(existsSync(dir), `${name}: no images directory`);
    t.deepEqual(await Promise.all(all.map((p) => snapshot(p))), before, `${name}: untouched`);
    for (const p of all) await assertRunningUntraced(t, p);
  }
});
