/**
 * From the samples of a run to the report: one row per configuration (mode,
 * size, threads, churn, tracking, dirty rate, iteration) with every figure as
 * median, min and max; the references per size; and the project's goals, each
 * judged against the rows it is about.
 */
import type { BenchMode, BenchPlan } from './plan.js';
import type { MachineInfo } from './machine.js';
import type { ReferenceSample, RunOutput, Sample, Skip } from './run.js';
import { rounded, stat, type Stat } from './stats.js';

export interface BenchRow {
  mode: BenchMode;
  sizeBytes: number;
  threads: number;
  /** Fraction of the data pages rewritten before this pre-dump; null for a first pre-dump. */
  dirtyRate: number | null;
  churn: boolean;
  /** 0: a first pre-dump (lone when trackMem is 'none'); k: the k-th incremental one. */
  iteration: number;
  trackMem: string;
  samples: number;
  /** The time any thread was stopped. */
  frozenMs: Stat;
  totalMs: Stat;
  drainMs: Stat;
  /** totalMs ÷ the median memcpy of the same size (null without a reference). */
  xMemcpy: Stat | null;
  /** Bytes written ÷ total time, in MB/s (10^6 bytes). */
  throughputMBps: Stat;
  pagesWritten: Stat;
  /** Incremental pre-dumps: pages the workload rewrote, and pages written inside its data. */
  pagesDirtied: Stat | null;
  dataPagesWritten: Stat | null;
  peakRssBytes: Stat;
  pinnedBytes: Stat;
  /** The workload's progress rate during the pre-dump ÷ before it. */
  workloadSpeed: Stat;
  /** Set when splice mode fell back to read mode. */
  fallback?: string;
}

export interface ReferenceFigures {
  /** Keyed by size in bytes (as a string: JSON object keys). */
  memcpyMs: Record<string, Stat>;
  memcpyFreshMs: Record<string, Stat>;
  pvrMs: Record<string, Stat>;
  writeMs: Record<string, Stat>;
  /** The bytes each reference copied (those of the full pre-dumps). */
  bytes: Record<string, number>;
}

export interface Goal {
  id: string;
  goal: string;
  /** The limit, in `unit`. */
  target: number;
  unit: string;
  /** The worst median over the configurations it applies to; null if none ran. */
  measured: number | null;
  /** null: not measured in this run. */
  met: boolean | null;
  detail: string;
}

export interface BenchReport {
  ok: true;
  runs: BenchRow[];
  reference: ReferenceFigures;
  goals: Goal[];
  machine: MachineInfo;
  /** The plan as run: sizes in bytes, and the command line that asked for it. */
  plan: Pick<
    BenchPlan,
    'threads' | 'dirtyRates' | 'churn' | 'modes' | 'iterations' | 'runs' | 'quick'
  > & {
    sizes: number[];
    command: string;
  };
  skipped: Skip[];
  notes: string[];
}

const keyOf = (s: Sample): string =>
  [s.mode, s.sizeBytes, s.threads, s.churn, s.trackMem, s.dirtyRate, s.iteration].join('|');

const sortOrder = (r: BenchRow, modes: BenchMode[]): number[] => [
  r.sizeBytes,
  r.threads,
  r.churn ? 1 : 0,
  r.trackMem === 'none' ? 0 : 1,
  r.dirtyRate ?? -1,
  r.iteration,
  modes.indexOf(r.mode),
];

export function aggregate(
  out: RunOutput,
  modes: BenchMode[],
): { runs: BenchRow[]; reference: ReferenceFigures } {
  const reference = referenceFigures(out.references);
  const groups = new Map<string, Sample[]>();
  for (const s of out.samples) {
    const k = keyOf(s);
    const g = groups.get(k);
    if (g) g.push(s);
    else groups.set(k, [s]);
  }
  const runs: BenchRow[] = [];
  for (const g of groups.values()) {
    const s0 = g[0]!;
    const of = (f: (s: Sample) => number, digits = 3): Stat => rounded(stat(g.map(f)), digits);
    const memcpy = reference.memcpyMs[String(s0.sizeBytes)];
    const incremental = s0.iteration > 0;
    const row: BenchRow = {
      mode: s0.mode,
      sizeBytes: s0.sizeBytes,
      threads: s0.threads,
      dirtyRate: s0.dirtyRate,
      churn: s0.churn,
      iteration: s0.iteration,
      trackMem: s0.trackMem,
      samples: g.length,
      frozenMs: of((s) => s.frozenMs),
      totalMs: of((s) => s.totalMs),
      drainMs: of((s) => s.drainMs),
      xMemcpy: memcpy ? of((s) => s.totalMs / memcpy.median, 4) : null,
      throughputMBps: of((s) => s.bytesWritten / 1e6 / (s.totalMs / 1000), 1),
      pagesWritten: of((s) => s.pagesWritten),
      pagesDirtied: incremental ? of((s) => s.pagesDirtied ?? 0) : null,
      dataPagesWritten: incremental ? of((s) => s.dataPagesWritten ?? 0) : null,
      peakRssBytes: of((s) => s.peakRssBytes),
      pinnedBytes: of((s) => s.pinnedBytes),
      workloadSpeed: of((s) => s.workloadSpeed, 4),
    };
    const fallback = g.find((s) => s.fallback)?.fallback;
    if (fallback) row.fallback = fallback;
    runs.push(row);
  }
  runs.sort((a, b) => {
    const x = sortOrder(a, modes);
    const y = sortOrder(b, modes);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
    return 0;
  });
  return { runs, reference };
}

function referenceFigures(refs: readonly ReferenceSample[]): ReferenceFigures {
  const bySize = new Map<number, ReferenceSample[]>();
  for (const r of refs) bySize.set(r.sizeBytes, [...(bySize.get(r.sizeBytes) ?? []), r]);
  const fig: ReferenceFigures = {
    memcpyMs: {},
    memcpyFreshMs: {},
    pvrMs: {},
    writeMs: {},
    bytes: {},
  };
  for (const [size, rs] of bySize) {
    const k = String(size);
    fig.memcpyMs[k] = rounded(stat(rs.map((r) => r.memcpyMs)), 3);
    fig.memcpyFreshMs[k] = rounded(stat(rs.map((r) => r.memcpyFreshMs)), 3);
    fig.pvrMs[k] = rounded(stat(rs.map((r) => r.pvrMs)), 3);
    fig.writeMs[k] = rounded(stat(rs.map((r) => r.writeMs)), 3);
    fig.bytes[k] = rs[0]!.bytes;
  }
  return fig;
}

// ---- the goals ------------------------------------------------------------------------------

const GiB = 2 ** 30;
/** CRIU 4.2's splice-mode frozen time for a 1 GiB target on this kind of machine (issue 5). */
export const CRIU_SPLICE_FROZEN_1G_MS = 111;

const configName = (r: BenchRow): string =>
  `${r.threads} thread${r.threads === 1 ? '' : 's'}, churn ${r.churn ? 'on' : 'off'}`;
const sizeName = (bytes: number): string =>
  bytes % GiB === 0 ? `${bytes / GiB} GiB` : `${Math.round(bytes / 2 ** 20)} MiB`;
const f2 = (x: number): string => x.toFixed(2);

/** The worst (largest) of `value` over `rows`, and where. */
function worst(rows: BenchRow[], value: (r: BenchRow) => number): { row: BenchRow; v: number } {
  let best = { row: rows[0]!, v: value(rows[0]!) };
  for (const row of rows) {
    const v = value(row);
    if (v > best.v) best = { row, v };
  }
  return best;
}

/** `1 thread, churn off 3.61; 8 threads, churn off 23.50 (over)`: every configuration's median. */
function perConfig(rows: BenchRow[], value: (r: BenchRow) => number, limit: number): string {
  return rows
    .map((r) => `${configName(r)} ${f2(value(r))}${value(r) > limit ? ' (over)' : ''}`)
    .join('; ');
}

function notMeasured(id: string, goal: string, target: number, unit: string, why: string): Goal {
  return { id, goal, target, unit, measured: null, met: null, detail: `not measured: ${why}` };
}

export function judgeGoals(runs: BenchRow[], reference: ReferenceFigures): Goal[] {
  const goals: Goal[] = [];
  const lone = (mode: BenchMode, size?: number): BenchRow[] =>
    runs.filter(
      (r) =>
        r.mode === mode &&
        r.iteration === 0 &&
        r.trackMem === 'none' &&
        (size === undefined || r.sizeBytes === size),
    );

  // 1. Read mode stops the target at most 5 ms at 1 GiB.
  {
    const text = 'read mode: target stopped ≤ 5 ms at 1 GiB (a lone pre-dump)';
    const rows = lone('read', GiB);
    if (rows.length === 0) {
      goals.push(notMeasured('read-frozen-1g', text, 5, 'ms', 'no read-mode run at 1 GiB'));
    } else {
      const w = worst(rows, (r) => r.frozenMs.median);
      goals.push({
        id: 'read-frozen-1g',
        goal: text,
        target: 5,
        unit: 'ms',
        measured: w.v,
        met: w.v <= 5,
        detail: `median per workload: ${perConfig(rows, (r) => r.frozenMs.median, 5)}`,
      });
    }
  }

  // 2. A whole pre-dump takes at most 3× a memcpy of the same size.
  {
    const text = 'whole pre-dump ≤ 3× memcpy of the same size (lone pre-dumps, every mode)';
    const rows = runs.filter(
      (r) => r.iteration === 0 && r.trackMem === 'none' && r.xMemcpy !== null,
    );
    if (rows.length === 0) {
      goals.push(notMeasured('total-vs-memcpy', text, 3, '× memcpy', 'no lone pre-dump'));
    } else {
      const w = worst(rows, (r) => r.xMemcpy!.median);
      // The first workload configuration (as the chart shows it), size by size.
      const base = rows.filter((r) => r.threads === rows[0]!.threads && r.churn === rows[0]!.churn);
      const sizes = [...new Set(base.map((r) => r.sizeBytes))];
      const bySize = sizes
        .map(
          (size) =>
            `${sizeName(size)}: ` +
            base
              .filter((r) => r.sizeBytes === size)
              .map((r) => `${r.mode} ${f2(r.xMemcpy!.median)}×`)
              .join(', '),
        )
        .join('; ');
      const big = base.filter((r) => r.sizeBytes === sizes[sizes.length - 1]);
      const b = big.find((r) => r.mode === 'read') ?? big[0]!;
      const k = String(b.sizeBytes);
      const fresh = reference.memcpyFreshMs[k]!.median;
      const write = reference.writeMs[k]!.median;
      goals.push({
        id: 'total-vs-memcpy',
        goal: text,
        target: 3,
        unit: '× memcpy',
        measured: w.v,
        met: w.v <= 3,
        detail:
          `${configName(rows[0]!)}: ${bySize}; the worst ${f2(w.v)}× (${w.row.mode}, ` +
          `${sizeName(w.row.sizeBytes)}, ${configName(w.row)}). ${b.mode} at ` +
          `${sizeName(b.sizeBytes)} against a memcpy into untouched memory: ` +
          `${f2(b.totalMs.median / fresh)}×, against writing the bytes alone where the images ` +
          `go: ${f2(b.totalMs.median / write)}×`,
      });
    }
  }

  // 3. Incremental pre-dumps write the dirtied pages, within 3%.
  {
    const text = 'incremental: pages written within 3% of the pages dirtied';
    const rows = runs.filter(
      (r) => r.iteration > 0 && (r.dirtyRate ?? 0) > 0 && r.pagesDirtied && r.dataPagesWritten,
    );
    if (rows.length === 0) {
      goals.push(notMeasured('incremental-precision', text, 3, '%', 'no incremental run'));
    } else {
      const off = (r: BenchRow): number =>
        (Math.abs(r.dataPagesWritten!.median - r.pagesDirtied!.median) / r.pagesDirtied!.median) *
        100;
      const w = worst(rows, off);
      const total = worst(rows, (r) => r.pagesWritten.median / r.pagesDirtied!.median);
      goals.push({
        id: 'incremental-precision',
        goal: text,
        target: 3,
        unit: '%',
        measured: w.v,
        met: w.v <= 3,
        detail:
          `in the workload's data: worst ${f2(w.v)}% off (${w.row.mode}, ` +
          `${sizeName(w.row.sizeBytes)}, ${((w.row.dirtyRate ?? 0) * 100).toFixed(1)}% dirtied, ` +
          `#${w.row.iteration}, ${configName(w.row)}); all pages written ÷ dirtied, with the ` +
          `workload's own other writes (stacks, heap): up to ${f2(total.v)}`,
      });
    }
  }

  // 4. Splice mode stops the target at most 0.8× as long as CRIU 4.2 does.
  {
    const limit = 0.8 * CRIU_SPLICE_FROZEN_1G_MS;
    const text = `splice mode: target stopped ≤ 0.8× CRIU 4.2's ${CRIU_SPLICE_FROZEN_1G_MS} ms at 1 GiB`;
    const rows = lone('splice', GiB);
    if (rows.length === 0) {
      goals.push(notMeasured('splice-frozen-1g', text, limit, 'ms', 'no splice run at 1 GiB'));
    } else {
      const w = worst(rows, (r) => r.frozenMs.median);
      goals.push({
        id: 'splice-frozen-1g',
        goal: text,
        target: limit,
        unit: 'ms',
        measured: w.v,
        met: w.v <= limit,
        detail:
          `median per workload: ${perConfig(rows, (r) => r.frozenMs.median, limit)}; the worst ` +
          `is ${f2(w.v / CRIU_SPLICE_FROZEN_1G_MS)}× CRIU's` +
          (w.row.fallback ? `; fell back to read mode: ${w.row.fallback}` : ''),
      });
    }
  }
  return goals;
}

export function buildReport(
  plan: BenchPlan,
  out: RunOutput,
  machine: MachineInfo,
  command: string,
): BenchReport {
  const { runs, reference } = aggregate(out, plan.modes);
  const notes = [...out.notes];
  if (!out.peakRssPerRun) {
    notes.push('peak RSS could not be reset per pre-dump: it is the lifetime peak of the bench');
  }
  return {
    ok: true,
    runs,
    reference,
    goals: judgeGoals(runs, reference),
    machine,
    plan: {
      sizes: plan.sizes.map((s) => s.bytes),
      threads: plan.threads,
      dirtyRates: plan.dirtyRates,
      churn: plan.churn,
      modes: plan.modes,
      iterations: plan.iterations,
      runs: plan.runs,
      quick: plan.quick,
      command,
    },
    skipped: out.skipped,
    notes,
  };
}
