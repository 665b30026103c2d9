/**
 * `predump bench --tree`: read-mode pre-dumps of a tree of processes sharing anonymous
 * memory (the bundled workload with `--tree`), beside a pre-dump of one process holding
 * as many bytes and a memcpy of them, taking turns round after round. Every pre-dump is
 * a whole `predump pre-dump` process, as a user runs it.
 *
 * The goals (issue 12): a tree of 100 processes, 1 GiB in all, a quarter of it shared:
 * read mode stopped ≤ 15 ms, every process frozen together; shared pages counted once.
 * Freeze-free and incremental pre-dumps of trees need dirty tracking on trees, which
 * does not exist yet: those goals are reported as not measured.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from '../errors.js';
import { native, packageRoot } from '../native.js';
import type { Size } from './plan.js';
import { runToEnd, timedRun, type RunMachine } from './machine.js';
import { formatStat, rounded, stat, type Stat } from './stats.js';
import { columns, machineLine } from './table.js';

/** The format of the report (`version`): raised when a field changes meaning. */
export const TREE_REPORT_VERSION = 1;

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
  /** One process holding as many bytes, pre-dumped the same way in the same rounds. */
  singleStoppedMs: Stat;
  singleTotalMs: Stat;
  /** memcpy of the size (fresh destination), in the same rounds. */
  memcpyMs: Stat;
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
  stoppedWindowMs: number;
  freezingMs: number;
  scanMs: number;
  totalMs: number;
  pagesWritten: number;
  processes?: unknown[];
  sharedMemory?: { sizeBytes: number; pagesWritten: number }[];
}

/** A whole `predump pre-dump` (read mode, no tracking) of `pid` into `dir`: its JSON. */
async function preDump(pid: number, dir: string): Promise<TreeJson> {
  const argv = [process.execPath, bin(), 'pre-dump', '-t', String(pid), '-D', dir];
  argv.push('--pre-dump-mode', 'read', '--track-mem', 'none', '--json');
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
  };
  let shared = { written: 0, pages: sharedBytes / page };
  try {
    single = await Workload.start({ sizeBytes: size.bytes, threads: plan.threads });
    const steps = ['tree', 'single', 'memcpy'] as const;
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
    singleStoppedMs: r3(s.singleStopped),
    singleTotalMs: r3(s.singleTotal),
    memcpyMs: r3(s.memcpy),
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
        `${r.singleStoppedMs.median.toFixed(1)} ms (medians)`,
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
  goals.push(
    {
      id: 'tree-freeze-free',
      goal: 'freeze-free pre-dumps of a tree stopped 0 ms after the first',
      met: null,
      detail: 'not measured: trees have no dirty tracking (nor freeze-free mode) yet',
    },
    {
      id: 'tree-incremental',
      goal: 'incremental pre-dumps of a tree within 3% of the pages dirtied',
      met: null,
      detail: 'not measured: trees have no dirty tracking yet (every page is copied each time)',
    },
  );
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
