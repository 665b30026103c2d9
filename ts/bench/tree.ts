/**
 * `predump bench --tree`: read-mode pre-dumps of a tree of processes sharing anonymous
 * memory (the bundled workload with `--tree`), beside splice-mode pre-dumps of the same tree,
 * a pre-dump of one process holding as many bytes and a memcpy of them, taking turns round
 * after round. Every pre-dump is
 * a whole `predump pre-dump` process, as a user runs it.
 *
 * The goals (issue 12): a tree of 100 processes, 1 GiB in all, a quarter of it shared:
 * read mode stopped ≤ 15 ms, every process frozen together; shared pages counted once;
 * pages written by an incremental pre-dump within 3% of those dirtied. After the rounds, a
 * tracked chain of the same tree: a first uffd-wp pre-dump, then `runs` times writes in every
 * process and in the shared region and a pre-dump on the one before. Then the freeze-free
 * chain: the tracking ended (`untrack -t`), a first freeze-free pre-dump (each process stopped
 * once, alone, to make its tracking), then 2 × `runs` rounds of the same writes and a pre-dump
 * on the one before, freeze-free and tracked read mode in turns on the one chain: the
 * freeze-free stops (the goal: 0 after the first) beside the read mode's, measured in the
 * same rounds.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from '../errors.js';
import { native, packageRoot } from '../native.js';
import type { Size } from './plan.js';
import { runToEnd, timedRun, type RunMachine } from './machine.js';
import { changedPagesOfTree } from './changed.js';
import { formatStat, rounded, stat, type Stat } from './stats.js';
import { columns, machineLine } from './table.js';

/** The format of the report (`version`): raised when a field changes meaning. */
export const TREE_REPORT_VERSION = 2;

/** The share of each process's data (and of the shared region) written between pre-dumps. */
export const TREE_DIRTY_PERMILLE = 62;

/** Issue 12: the tree's stopped time in read mode. */
export const TREE_STOPPED_GOAL_MS = 15;

export interface TreePlan {
  /** Bytes of the whole tree (private data of every process + the shared region). */
  sizes: Size[];
  processes: number;
  /** Percent of the bytes in the region every process shares. */
  sharedPercent: number;
  /** Compute threads per process. */
  threads: number;
  runs: number;
  dir: string;
}

export interface TreeEvents {
  step(what: string): void;
}

export interface TreeRow {
  sizeBytes: number;
  label: string;
  processes: number;
  sharedBytes: number;
  runs: number;
  /** The tree's pre-dumps: the time any thread of the tree was stopped. */
  stoppedMs: Stat;
  /** Of which: freezing every process (from the first interrupt to the last stop). */
  freezingMs: Stat;
  /** Of which: finding the pages of every process and shared object while frozen. */
  scanMs: Stat;
  totalMs: Stat;
  pagesWritten: Stat;
  /** Pages written of the shared object, and its size in pages: equal when counted once. */
  sharedPagesWritten: number;
  sharedPages: number;
  /**
   * The tree's splice-mode pre-dumps in the same rounds (every process's pages referenced into
   * pipes inside the freeze, drained after the thaw; untracked, as the read-mode ones): the
   * time any thread was stopped, of which the injected vmsplices (every process's, summed),
   * and the whole run.
   */
  spliceStoppedMs: Stat;
  spliceInjectMs: Stat;
  spliceTotalMs: Stat;
  /** Bytes pinned in pipes until drained, and the pipes (every process's). */
  splicePinnedBytes: Stat;
  splicePipes: Stat;
  /** One process holding as many bytes, pre-dumped the same way in the same rounds. */
  singleStoppedMs: Stat;
  singleTotalMs: Stat;
  /** memcpy of the size (fresh destination), in the same rounds. */
  memcpyMs: Stat;
  /** The tracked chain; null where uffd-wp tracking is not possible (`untracked` says why). */
  incremental: TreeIncremental | null;
  untracked?: string;
  /** The freeze-free chain; null where uffd-wp tracking is not possible. */
  freezeFree?: TreeFreezeFree | null;
}

/**
 * A chain of the tree's pre-dumps mixing the modes: a first freeze-free one (every process's
 * tracking made, each process stopped alone), then freeze-free and tracked read-mode ones in
 * turns, each on the one before, after the same writes.
 */
export interface TreeFreezeFree {
  /** The first: the longest any process was stopped (to make its tracking). */
  firstStoppedMs: number;
  /** The freeze-free pre-dumps after the first: the longest any process was stopped. */
  stoppedMs: Stat;
  totalMs: Stat;
  /** The tracked read-mode pre-dumps of the same chain, in turns with them. */
  readStoppedMs: Stat;
  readTotalMs: Stat;
  /** Per freeze-free pre-dump: pages dirtied in the processes' data, and written of them. */
  privateDirtied: Stat;
  privateWritten: Stat;
  /** Of the processes' pages written, those whose bytes differ from the chain's copy or that it lacks. */
  privateChanged: Stat;
}

/** A tracked chain of the tree: its first pre-dump, then `runs` incremental ones. */
export interface TreeIncremental {
  /** The first pre-dump with uffd-wp: every process's tracking made inside the freeze. */
  firstStoppedMs: number;
  stoppedMs: Stat;
  /** Per incremental pre-dump: pages written to each process's data by the workload… */
  privateDirtied: Stat;
  /** …and to the shared region. */
  sharedDirtied: Stat;
  /** Pages the pre-dump wrote of the processes, and of the shared region. */
  privateWritten: Stat;
  sharedWritten: Stat;
  /**
   * Of the processes' pages written, those whose bytes differ from the chain's copy or that
   * the chain lacks (`changed.ts`): a lower bound of the pages the processes dirtied, their
   * stacks and heaps included, which `privateDirtied` leaves out.
   */
  privateChanged: Stat;
  /** Pages of the processes skipped because the parent holds them (PE_PARENT). */
  skippedParent: Stat;
  /**
   * Pages of the shared region left to the parent: equal to the chain's copy (each object is
   * compared with the chain, page by page).
   */
  sharedSkippedParent: Stat;
}

export interface TreeGoal {
  id: string;
  goal: string;
  /** null: not measured (and why, in detail). */
  met: boolean | null;
  detail: string;
}

export interface TreeReport {
  version: typeof TREE_REPORT_VERSION;
  ok: true;
  command: string;
  machine: RunMachine;
  rows: TreeRow[];
  goals: TreeGoal[];
}

const bin = (): string => path.join(packageRoot, 'bin', 'predump.js');

interface TreeJson {
  mode?: string;
  fallback?: string | null;
  pipes?: number;
  pinnedBytes?: number;
  injectMs?: number;
  stoppedWindowMs: number;
  freezingMs: number;
  scanMs: number;
  totalMs: number;
  pagesWritten: number;
  pagesSkippedParent?: number;
  trackBackend?: string;
  processes?: { pid: number }[];
  sharedMemory?: { sizeBytes: number; pagesWritten: number; pagesSkippedParent?: number }[];
}

type TreeWorkload = Awaited<ReturnType<typeof import('../workload.js').Workload.start>>;

/**
 * The tracked chain: a first pre-dump with uffd-wp, then `runs` rounds of writes (every
 * process's data and the shared region, TREE_DIRTY_PERMILLE each) and a pre-dump on the one
 * before. null (and why) where uffd-wp tracking is not possible.
 */
async function measureIncremental(
  plan: TreePlan,
  size: Size,
  tree: TreeWorkload,
  sharedBytes: number,
  scratch: string,
  events: TreeEvents,
): Promise<TreeIncremental | string> {
  const chain = await mkdtemp(path.join(scratch, 'chain-'));
  const track = ['--track-mem', 'uffd-wp'];
  let first: TreeJson;
  try {
    first = await preDump(tree.pid, path.join(chain, '0'), track);
  } catch (err) {
    const m = (err as Error).message;
    if (/userfaultfd/.test(m))
      return `not measured: uffd-wp tracking is not possible here (${m.slice(-200)})`;
    throw err;
  }
  const s = {
    stopped: [] as number[],
    privateDirtied: [] as number[],
    sharedDirtied: [] as number[],
    privateWritten: [] as number[],
    privateChanged: [] as number[],
    sharedWritten: [] as number[],
    skipped: [] as number[],
    sharedSkipped: [] as number[],
  };
  const sharedOf = (j: TreeJson): number =>
    (j.sharedMemory ?? [])
      .filter((o) => o.sizeBytes === sharedBytes)
      .reduce((n, o) => n + o.pagesWritten, 0);
  for (let round = 1; round <= plan.runs; round++) {
    events.step(
      `${size.label} tree of ${plan.processes}: tracked pre-dump ${round} of ${plan.runs}`,
    );
    let privateDirtied = 0;
    for (let k = 0; k < plan.processes; k++) {
      const a = await tree.command<{ dirtied: number }>(
        `proc ${k} dirty ${TREE_DIRTY_PERMILLE} ${round * 1000 + k}`,
      );
      privateDirtied += a.dirtied;
    }
    const sharedDirtied =
      sharedBytes > 0
        ? (
            await tree.command<{ dirtied: number }>(
              `shared-dirty shared ${TREE_DIRTY_PERMILLE} ${round}`,
            )
          ).dirtied
        : 0;
    const j = await preDump(tree.pid, path.join(chain, String(round)), [
      ...track,
      '--prev-images-dir',
      `../${round - 1}`,
    ]);
    const shared = sharedOf(j);
    s.stopped.push(j.stoppedWindowMs);
    s.privateDirtied.push(privateDirtied);
    s.sharedDirtied.push(sharedDirtied);
    s.privateWritten.push(j.pagesWritten - shared);
    s.privateChanged.push(await changedOf(path.join(chain, String(round)), j));
    s.sharedWritten.push(shared);
    s.skipped.push(j.pagesSkippedParent ?? 0);
    s.sharedSkipped.push(
      (j.sharedMemory ?? [])
        .filter((o) => o.sizeBytes === sharedBytes)
        .reduce((n, o) => n + (o.pagesSkippedParent ?? 0), 0),
    );
  }
  return {
    firstStoppedMs: rounded(stat([first.stoppedWindowMs]), 3).median,
    stoppedMs: rounded(stat(s.stopped), 3),
    privateDirtied: stat(s.privateDirtied),
    sharedDirtied: stat(s.sharedDirtied),
    privateWritten: stat(s.privateWritten),
    privateChanged: stat(s.privateChanged),
    sharedWritten: stat(s.sharedWritten),
    skippedParent: stat(s.skipped),
    sharedSkippedParent: stat(s.sharedSkipped),
  };
}

/**
 * The freeze-free chain (see `TreeFreezeFree`), on the tree the tracked chain leaves
 * tracked: its tracking ended first, so that the first freeze-free pre-dump makes it.
 */
async function measureFreezeFree(
  plan: TreePlan,
  size: Size,
  tree: TreeWorkload,
  sharedBytes: number,
  scratch: string,
  events: TreeEvents,
): Promise<TreeFreezeFree> {
  const untrack = await runToEnd([process.execPath, bin(), 'untrack', '-t', String(tree.pid)]);
  if (untrack.status !== 0) {
    throw new PredumpError('EBENCH', `untrack -t ${tree.pid} failed: ${untrack.stderr.trim()}`);
  }
  const chain = await mkdtemp(path.join(scratch, 'freeze-free-'));
  const mode = (m: 'read' | 'freeze-free'): string[] => [
    '--track-mem',
    'uffd-wp',
    '--pre-dump-mode',
    m,
  ];
  const first = await preDump(tree.pid, path.join(chain, '0'), mode('freeze-free'));
  const s = {
    stopped: [] as number[],
    total: [] as number[],
    readStopped: [] as number[],
    readTotal: [] as number[],
    dirtied: [] as number[],
    written: [] as number[],
    changed: [] as number[],
  };
  const sharedOf = (j: TreeJson): number =>
    (j.sharedMemory ?? []).reduce((n, o) => n + o.pagesWritten, 0);
  for (let round = 1; round <= 2 * plan.runs; round++) {
    const m = round % 2 === 1 ? 'freeze-free' : 'read';
    events.step(
      `${size.label} tree of ${plan.processes}: mixed chain, pre-dump ${round} of ${2 * plan.runs} (${m})`,
    );
    let dirtied = 0;
    for (let k = 0; k < plan.processes; k++) {
      const a = await tree.command<{ dirtied: number }>(
        `proc ${k} dirty ${TREE_DIRTY_PERMILLE} ${50_000 + round * 1000 + k}`,
      );
      dirtied += a.dirtied;
    }
    if (sharedBytes > 0) {
      await tree.command(`shared-dirty shared ${TREE_DIRTY_PERMILLE} ${50_000 + round}`);
    }
    const j = await preDump(tree.pid, path.join(chain, String(round)), [
      ...mode(m),
      '--prev-images-dir',
      `../${round - 1}`,
    ]);
    if ((j.processes?.length ?? 1) !== plan.processes) {
      throw new PredumpError(
        'EBENCH',
        `the ${m} pre-dump held ${j.processes?.length ?? 1} processes, not ${plan.processes}`,
      );
    }
    if (m === 'freeze-free') {
      s.stopped.push(j.stoppedWindowMs);
      s.total.push(j.totalMs);
      s.dirtied.push(dirtied);
      s.written.push(j.pagesWritten - sharedOf(j));
      s.changed.push(await changedOf(path.join(chain, String(round)), j));
    } else {
      s.readStopped.push(j.stoppedWindowMs);
      s.readTotal.push(j.totalMs);
    }
  }
  const r3 = (xs: number[]): Stat => rounded(stat(xs), 3);
  return {
    firstStoppedMs: r3([first.stoppedWindowMs]).median,
    stoppedMs: r3(s.stopped),
    totalMs: r3(s.total),
    readStoppedMs: r3(s.readStopped),
    readTotalMs: r3(s.readTotal),
    privateDirtied: stat(s.dirtied),
    privateWritten: stat(s.written),
    privateChanged: stat(s.changed),
  };
}

/** The processes' pages the pre-dump `j` wrote into `dir` that had changed (`changed.ts`). */
async function changedOf(dir: string, j: TreeJson): Promise<number> {
  const c = await changedPagesOfTree(
    dir,
    (j.processes ?? []).map((p) => p.pid),
  );
  return c.changed + c.added;
}

/**
 * A whole `predump pre-dump` (read mode unless `extra` names a mode; no tracking unless it
 * asks) of `pid` into `dir`: its JSON.
 */
async function preDump(pid: number, dir: string, extra: string[] = []): Promise<TreeJson> {
  const argv = [process.execPath, bin(), 'pre-dump', '-t', String(pid), '-D', dir];
  const tracking = extra.includes('--track-mem') ? [] : ['--track-mem', 'none'];
  const mode = extra.includes('--pre-dump-mode') ? [] : ['--pre-dump-mode', 'read'];
  argv.push(...mode, ...tracking, '--json', ...extra);
  const r = await runToEnd(argv);
  if (r.status !== 0) {
    throw new PredumpError(
      'EBENCH',
      `pre-dump -t ${pid} failed (exit ${r.status}): ${r.stderr.trim().slice(-400)}`,
    );
  }
  return JSON.parse(r.stdout) as TreeJson;
}

async function measure(
  plan: TreePlan,
  size: Size,
  scratch: string,
  events: TreeEvents,
): Promise<TreeRow> {
  const { Workload } = await import('../workload.js');
  const page = 4096;
  const sharedBytes = Math.floor((size.bytes * plan.sharedPercent) / 100 / page) * page;
  const privateBytes = Math.max(
    page,
    Math.floor((size.bytes - sharedBytes) / plan.processes / page) * page,
  );
  const tree = await Workload.start({
    tree: plan.processes,
    sizeBytes: privateBytes,
    sharedBytes: sharedBytes > 0 ? sharedBytes : undefined,
    threads: plan.threads,
  });
  let single: Awaited<ReturnType<typeof Workload.start>> | undefined;
  const s = {
    stopped: [] as number[],
    freezing: [] as number[],
    scan: [] as number[],
    total: [] as number[],
    pages: [] as number[],
    singleStopped: [] as number[],
    singleTotal: [] as number[],
    memcpy: [] as number[],
    spliceStopped: [] as number[],
    spliceInject: [] as number[],
    spliceTotal: [] as number[],
    splicePinned: [] as number[],
    splicePipes: [] as number[],
  };
  let shared = { written: 0, pages: sharedBytes / page };
  let incremental: TreeIncremental | string = 'not measured';
  let freezeFree: TreeFreezeFree | null = null;
  try {
    single = await Workload.start({ sizeBytes: size.bytes, threads: plan.threads });
    const steps = ['tree', 'splice', 'single', 'memcpy'] as const;
    for (let round = -1; round < plan.runs; round++) {
      events.step(`${size.label} tree of ${plan.processes}: round ${round + 1} of ${plan.runs}`);
      const count = round >= 0;
      for (let k = 0; k < steps.length; k++) {
        const step = steps[(k + Math.max(0, round)) % steps.length]!;
        if (step === 'memcpy') {
          const m = await native.memcpyReference(size.bytes);
          if (count) s.memcpy.push(m.freshMs);
          continue;
        }
        const dir = await mkdtemp(path.join(scratch, `${step}-`));
        try {
          if (step === 'single') {
            const j = await preDump(single.pid, dir);
            if (count) {
              s.singleStopped.push(j.stoppedWindowMs);
              s.singleTotal.push(j.totalMs);
            }
            continue;
          }
          if (step === 'splice') {
            const j = await preDump(tree.pid, dir, ['--pre-dump-mode', 'splice']);
            // Every process spliced: a fallback would measure read mode under splice's name.
            if (
              j.mode !== 'splice' ||
              j.fallback ||
              (j.processes?.length ?? 1) !== plan.processes
            ) {
              throw new PredumpError(
                'EBENCH',
                `the tree's splice pre-dump ran in ${j.mode} mode over ${j.processes?.length ?? 1} processes` +
                  (j.fallback ? ` (${j.fallback})` : ''),
              );
            }
            if (count) {
              s.spliceStopped.push(j.stoppedWindowMs);
              s.spliceInject.push(j.injectMs ?? 0);
              s.spliceTotal.push(j.totalMs);
              s.splicePinned.push(j.pinnedBytes ?? 0);
              s.splicePipes.push(j.pipes ?? 0);
            }
            continue;
          }
          const j = await preDump(tree.pid, dir);
          if ((j.processes?.length ?? 1) !== plan.processes) {
            throw new PredumpError(
              'EBENCH',
              `the tree pre-dump held ${j.processes?.length ?? 1} processes, not ${plan.processes}`,
            );
          }
          // The workload's shared region, told by its size (the tree shares others, small).
          const objects = (j.sharedMemory ?? []).filter((o) => o.sizeBytes === sharedBytes);
          if (sharedBytes > 0 && objects.length !== 1) {
            throw new PredumpError(
              'EBENCH',
              `the tree pre-dump found ${objects.length} shared objects of ${sharedBytes} bytes, not 1`,
            );
          }
          shared = { written: objects[0]?.pagesWritten ?? 0, pages: sharedBytes / page };
          if (count) {
            s.stopped.push(j.stoppedWindowMs);
            s.freezing.push(j.freezingMs);
            s.scan.push(j.scanMs);
            s.total.push(j.totalMs);
            s.pages.push(j.pagesWritten);
          }
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }
    }
    incremental = await measureIncremental(plan, size, tree, sharedBytes, scratch, events);
    if (typeof incremental !== 'string') {
      freezeFree = await measureFreezeFree(plan, size, tree, sharedBytes, scratch, events);
    }
    for (const w of [tree, single]) {
      const self = await w.selfCheck();
      if (!self.ok) throw new PredumpError('EBENCH', `a ${size.label} workload failed its check`);
    }
  } finally {
    await tree.stop();
    await single?.stop();
  }
  const r3 = (xs: number[]): Stat => rounded(stat(xs), 3);
  return {
    sizeBytes: size.bytes,
    label: size.label,
    processes: plan.processes,
    sharedBytes,
    runs: plan.runs,
    stoppedMs: r3(s.stopped),
    freezingMs: r3(s.freezing),
    scanMs: r3(s.scan),
    totalMs: r3(s.total),
    pagesWritten: stat(s.pages),
    sharedPagesWritten: shared.written,
    sharedPages: shared.pages,
    spliceStoppedMs: r3(s.spliceStopped),
    spliceInjectMs: r3(s.spliceInject),
    spliceTotalMs: r3(s.spliceTotal),
    splicePinnedBytes: stat(s.splicePinned),
    splicePipes: stat(s.splicePipes),
    singleStoppedMs: r3(s.singleStopped),
    singleTotalMs: r3(s.singleTotal),
    memcpyMs: r3(s.memcpy),
    incremental: typeof incremental === 'string' ? null : incremental,
    ...(typeof incremental === 'string' ? { untracked: incremental } : {}),
    freezeFree,
  };
}

function judge(rows: TreeRow[]): TreeGoal[] {
  const goals: TreeGoal[] = [];
  for (const r of rows) {
    goals.push({
      id: `tree-stopped-${r.label}`,
      goal: `${r.label}, ${r.processes} processes: read mode stopped ≤ ${TREE_STOPPED_GOAL_MS} ms`,
      met: r.stoppedMs.median <= TREE_STOPPED_GOAL_MS,
      detail:
        `${r.stoppedMs.median.toFixed(1)} ms (freezing ${r.freezingMs.median.toFixed(1)}, ` +
        `scan ${r.scanMs.median.toFixed(1)}); one process of the same size: ` +
        `${r.singleStoppedMs.median.toFixed(1)} ms; the tree in splice mode, same rounds: ` +
        `${r.spliceStoppedMs.median.toFixed(1)} ms (of which injected vmsplices ` +
        `${r.spliceInjectMs.median.toFixed(1)}), total ${r.spliceTotalMs.median.toFixed(0)} ms ` +
        `against ${r.totalMs.median.toFixed(0)} (medians)`,
    });
    if (r.sharedPages > 0) {
      goals.push({
        id: `tree-shared-once-${r.label}`,
        goal: `${r.label}: shared pages counted once`,
        met: r.sharedPagesWritten === r.sharedPages,
        detail: `${r.sharedPagesWritten} pages written of a shared object of ${r.sharedPages} pages mapped by ${r.processes} processes`,
      });
    }
  }
  for (const r of rows) {
    const f = r.freezeFree;
    const goal = `${r.label}, ${r.processes} processes: freeze-free pre-dumps stopped 0 ms after the first`;
    goals.push(
      f
        ? {
            id: `tree-freeze-free-${r.label}`,
            goal,
            met: f.stoppedMs.max === 0,
            detail:
              `${f.stoppedMs.max.toFixed(1)} ms at most in ${r.runs} runs (the first, which makes each ` +
              `process's tracking, each process stopped alone: ${f.firstStoppedMs.toFixed(1)} ms at most); ` +
              `tracked read-mode pre-dumps of the same chain, in turns: stopped ${f.readStoppedMs.median.toFixed(1)} ms, ` +
              `total ${f.readTotalMs.median.toFixed(0)} ms against ${f.totalMs.median.toFixed(0)} (medians); private pages ` +
              `${f.privateWritten.median} written for ${f.privateDirtied.median} dirtied, ${f.privateChanged.median} changed`,
          }
        : {
            id: `tree-freeze-free-${r.label}`,
            goal,
            met: null,
            detail: r.untracked ?? 'not measured',
          },
    );
  }
  for (const r of rows) {
    const i = r.incremental;
    const goal = `${r.label}, ${r.processes} processes: incremental pre-dumps within 3% of the pages dirtied`;
    if (i === null) {
      goals.push({
        id: `tree-incremental-${r.label}`,
        goal,
        met: null,
        detail: r.untracked ?? 'not measured',
      });
      continue;
    }
    // Pages dirtied, as a lower bound: the bench's own count (the pages its `dirty`
    // commands wrote) leaves out what the processes write themselves (their stacks, the
    // command thread's heap, the workload's epoch table); the pages whose bytes changed
    // (compared with the chain's copy) include it. Either is at most the pages the
    // processes dirtied, so the larger one is too.
    const privateDirtied = Math.max(i.privateDirtied.median, i.privateChanged.median);
    // A shared page is written only if it differs from the chain's copy, or the chain
    // lacks it: every one of them changed.
    const sharedDirtied = Math.max(i.sharedDirtied.median, i.sharedWritten.median);
    const dirtied = privateDirtied + sharedDirtied;
    const written = i.privateWritten.median + i.sharedWritten.median;
    const pct = (w: number, d: number): string =>
      `${(((w - d) / Math.max(d, 1)) * 100).toFixed(1)}%`;
    goals.push({
      id: `tree-incremental-${r.label}`,
      goal,
      met: written <= dirtied * 1.03,
      detail:
        `${written} pages written for ${dirtied} dirtied (${pct(written, dirtied)}; medians, uffd-wp): private ` +
        `${i.privateWritten.median} written, ${i.privateChanged.median} of them changed (bytes differing ` +
        `from the chain's copy, or new), ${i.privateDirtied.median} written by the bench's dirty commands ` +
        `(${pct(i.privateWritten.median, i.privateDirtied.median)} over those: the rest the processes' own writes); ` +
        `shared ${i.sharedWritten.median} for ${i.sharedDirtied.median} dirtied by the bench (compared with the chain's copy; ` +
        `${i.sharedSkippedParent.median} left to the parent); stopped ${i.stoppedMs.median.toFixed(1)} ms, the first tracked pre-dump ` +
        `(every process's tracking made) ${i.firstStoppedMs.toFixed(1)} ms`,
    });
  }
  return goals;
}

export async function runTreeBench(
  plan: TreePlan,
  events: TreeEvents,
  command: string,
): Promise<TreeReport> {
  const { machine, result: rows } = await timedRun(plan.dir, async () => {
    const scratch = await mkdtemp(path.join(plan.dir, 'predump-bench-tree-'));
    const rows: TreeRow[] = [];
    try {
      for (const size of plan.sizes) rows.push(await measure(plan, size, scratch, events));
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
    return rows;
  });
  return { version: TREE_REPORT_VERSION, ok: true, command, machine, rows, goals: judge(rows) };
}

/** The report as a table, then the goals. */
export function renderTreeTable(r: TreeReport): string {
  const out = columns(
    [
      'size',
      'processes',
      'stopped ms',
      'freezing ms',
      'scan ms',
      'total ms',
      'splice: stopped ms',
      'total ms',
      'one process: stopped ms',
      'total ms',
      'memcpy ms',
    ],
    r.rows.map((x) => [
      x.label,
      String(x.processes),
      formatStat(x.stoppedMs, 1),
      formatStat(x.freezingMs, 1),
      formatStat(x.scanMs, 1),
      formatStat(x.totalMs, 0),
      formatStat(x.spliceStoppedMs, 1),
      formatStat(x.spliceTotalMs, 0),
      formatStat(x.singleStoppedMs, 1),
      formatStat(x.singleTotalMs, 0),
      formatStat(x.memcpyMs, 0),
    ]),
  );
  out.push('', 'Goals:');
  for (const g of r.goals) {
    const verdict = g.met === null ? '–     ' : g.met ? 'met   ' : 'missed';
    out.push(`  ${verdict} ${g.goal}: ${g.detail}`);
  }
  out.push('', machineLine(r.rows[0]?.runs ?? 0, r.machine));
  return out.join('\n') + '\n';
}
