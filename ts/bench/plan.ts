/**
 * What `predump bench` runs: the matrix of workloads (size × compute threads ×
 * churn), the modes compared on each, the dirty rates of the incremental
 * pre-dumps, and how often each is repeated; parsed from the command line and
 * checked before anything starts. Also the order the runs take and a time
 * estimate, shared by the runner (for its progress) and the command (which
 * prints the estimate first).
 */
import { PredumpError } from '../errors.js';
import { parseSize } from '../cli/sizes.js';

export const BENCH_MODES = ['read', 'splice', 'freeze-free'] as const;
export type BenchMode = (typeof BENCH_MODES)[number];

export interface Size {
  /** As written on the command line, normalised: 256M, 1G. */
  label: string;
  bytes: number;
}

export interface BenchPlan {
  /** Ascending. */
  sizes: Size[];
  /** Compute threads of the workload. */
  threads: number[];
  /** Fractions of the workload's data pages rewritten before each incremental pre-dump, ascending. */
  dirtyRates: number[];
  /** The workload's --churn off and/or on. */
  churn: boolean[];
  /** In the order they alternate in. */
  modes: BenchMode[];
  /** Incremental pre-dumps per dirty rate, after the first pre-dump of a chain. */
  iterations: number;
  /** Repetitions of everything on a workload, for median, min and max. */
  runs: number;
  /** Where the images go (a temporary directory inside it, removed at the end). */
  dir: string;
  /** The window over which the workload's progress rate is sampled before each pre-dump. */
  sampleMs: number;
  quick: boolean;
}

/** The defaults without --quick, and with it; explicit options override both. */
export const DEFAULTS = {
  sizes: '256M,1G,4G',
  threads: '1,8',
  dirtyRates: '0,1,10',
  churn: 'off,on',
  modes: BENCH_MODES.join(','),
  iterations: '1',
  runs: '3',
  sampleMs: 50,
} as const;

export const QUICK = {
  sizes: '64M',
  threads: '1',
  dirtyRates: '10',
  churn: 'off',
  modes: BENCH_MODES.join(','),
  iterations: '2',
  runs: '3',
  sampleMs: 50,
} as const;

const usage = (message: string): PredumpError => new PredumpError('EUSAGE', message);

/** The comma-separated items of an option, without blanks or repeats; at least one. */
export function listItems(text: string, option: string): string[] {
  const items = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (items.length === 0) throw usage(`${option} needs at least one value, got '${text}'`);
  return [...new Set(items)];
}

/** `256M,1G,4G` into sizes, ascending. */
export function parseSizes(text: string, option = '--sizes'): Size[] {
  const sizes = listItems(text, option).map((item) => {
    const bytes = parseSize(item, option);
    if (bytes % 4096 !== 0) throw usage(`${option} must be whole pages (4K), got '${item}'`);
    return { label: sizeLabel(bytes), bytes };
  });
  const unique = new Map(sizes.map((s) => [s.bytes, s]));
  return [...unique.values()].sort((a, b) => a.bytes - b.bytes);
}

/** 268435456 → 256M, 1073741824 → 1G, 4096 → 4K. */
export function sizeLabel(bytes: number): string {
  for (const [unit, shift] of [
    ['G', 30],
    ['M', 20],
    ['K', 10],
  ] as const) {
    if (bytes % 2 ** shift === 0) return `${bytes / 2 ** shift}${unit}`;
  }
  return String(bytes);
}

/** An integer option in [min, max], as typed (yargs would turn `abc` into NaN). */
export function parseInteger(text: string, option: string, min: number, max: number): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw usage(`${option} must be an integer from ${min} to ${max}, got '${text}'`);
  }
  return n;
}

export function parseThreads(text: string, option = '--threads'): number[] {
  const threads = listItems(text, option).map((t) => parseInteger(t, option, 1, 256));
  return [...new Set(threads)].sort((a, b) => a - b);
}

/**
 * Dirty rates in percent (`0,1,10`, `0.5%`) into fractions. The workload
 * rewrites a whole number of permille, so a rate has at most one decimal.
 */
export function parseDirtyRates(text: string, option = '--dirty-rates'): number[] {
  const rates = listItems(text, option).map((item) => {
    const m = /^(\d+(?:\.\d)?)%?$/.exec(item);
    const percent = m ? Number(m[1]) : NaN;
    if (!(percent >= 0 && percent <= 100)) {
      throw usage(
        `${option} must be percentages from 0 to 100 with at most one decimal (0,1,10), got '${item}'`,
      );
    }
    return Math.round(percent * 10) / 1000;
  });
  return [...new Set(rates)].sort((a, b) => a - b);
}

/** Permille of the workload's `dirty PERMILLE SEED` command. */
export function permille(rate: number): number {
  return Math.round(rate * 1000);
}

export function parseChurn(text: string, option = '--churn'): boolean[] {
  const churn = listItems(text, option).map((item) => {
    const v = { off: false, on: true }[item.toLowerCase()];
    if (v === undefined) throw usage(`${option} takes off, on or off,on; got '${item}'`);
    return v;
  });
  return [...new Set(churn)];
}

export function parseModes(text: string, option = '--modes'): BenchMode[] {
  return listItems(text, option).map((item) => {
    const mode = BENCH_MODES.find((m) => m === item);
    if (mode === undefined) {
      throw usage(`${option}: unknown mode '${item}': choose from ${BENCH_MODES.join(', ')}`);
    }
    return mode;
  });
}

// ---- the order of the runs, and what they cost --------------------------------------------

/** One workload of the matrix: started once, pre-dumped `runs` times in every mode. */
export interface WorkloadConfig {
  size: Size;
  threads: number;
  churn: boolean;
  /** The references (memcpy, process_vm_readv, write) are measured beside this one's runs. */
  references: boolean;
}

/** The workloads in the order they run: size, then threads, then churn. */
export function workloadConfigs(plan: Pick<BenchPlan, 'sizes' | 'threads' | 'churn'>) {
  const out: WorkloadConfig[] = [];
  for (const size of plan.sizes) {
    let first = true;
    for (const threads of plan.threads) {
      for (const churn of plan.churn) {
        out.push({ size, threads, churn, references: first });
        first = false;
      }
    }
  }
  return out;
}

/** What the machine can do, as far as the plan depends on it. */
export interface Abilities {
  /** The tracking backend for incremental chains, or 'none' when there is none. */
  trackMem: string;
}

/**
 * The pre-dumps of one mode in one round: a lone pre-dump (no tracking; not in
 * freeze-free mode, which always tracks), then, with tracking, a chain: its
 * first pre-dump and `iterations` incremental ones per dirty rate.
 */
export interface Step {
  kind: 'lone' | 'first' | 'incremental';
  dirtyRate: number | null;
  iteration: number;
}

export function stepsOf(plan: BenchPlan, mode: BenchMode, abilities: Abilities): Step[] {
  const steps: Step[] = [];
  if (mode !== 'freeze-free') steps.push({ kind: 'lone', dirtyRate: null, iteration: 0 });
  if (abilities.trackMem === 'none') return steps;
  steps.push({ kind: 'first', dirtyRate: null, iteration: 0 });
  for (const rate of plan.dirtyRates) {
    for (let k = 1; k <= plan.iterations; k++) {
      steps.push({ kind: 'incremental', dirtyRate: rate, iteration: k });
    }
  }
  return steps;
}

/**
 * A rough time model, in seconds, from this project's 2-vCPU development VM
 * (images in tmpfs, whose new pages the host backs lazily). Only for the
 * estimate printed first and the ETA of the progress line. The copy shares the
 * CPUs with the workload's busy threads: with more threads than CPUs it gets
 * its fair share, no more.
 */
export const cost = {
  workloadStart: (bytes: number): number => 0.3 + bytes / 1.5e9,
  preDump: (plan: BenchPlan, step: Step, bytes: number, threads: number, cpus: number): number => {
    // With more busy threads than CPUs the copy gets its fair share or less, the
    // less the bigger the copy (measured: 3× at 256 MiB, 6× at 1 GiB, 10× at
    // 4 GiB with 8 threads on 2 CPUs); new image pages also cost more per byte
    // the more of them there are.
    const share = Math.max(1, (threads + 2) / Math.max(1, cpus));
    const gib = bytes / 2 ** 30;
    const slowdown = threads > cpus ? Math.max(1, share * gib ** 0.4) : share ** 0.8;
    const dirty = (step.dirtyRate ?? 0) * bytes;
    const copy =
      step.kind === 'incremental'
        ? share ** 0.8 * (0.02 + dirty / 3e8 + dirty / 2e9)
        : slowdown * (0.03 + (bytes / 2.4e9) * gib ** 0.3);
    return copy + plan.sampleMs / 1000 + 0.05;
  },
  untrack: (bytes: number): number => 0.02 + bytes / 5e10,
  references: (bytes: number): number => 0.05 + bytes / 2.5e8,
};

/** The estimated seconds of the whole plan. */
export function estimateSeconds(plan: BenchPlan, abilities: Abilities, cpus = 2): number {
  let s = 0;
  for (const w of workloadConfigs(plan)) {
    s += cost.workloadStart(w.size.bytes);
    for (let round = 0; round < plan.runs; round++) {
      for (const mode of plan.modes) {
        for (const step of stepsOf(plan, mode, abilities)) {
          s += cost.preDump(plan, step, w.size.bytes, w.threads, cpus);
        }
        s += 2 * cost.untrack(w.size.bytes);
      }
      if (w.references) s += cost.references(w.size.bytes);
    }
  }
  return s;
}

/** The number of pre-dumps the plan makes. */
export function countPreDumps(plan: BenchPlan, abilities: Abilities): number {
  const perRound = plan.modes.reduce((n, m) => n + stepsOf(plan, m, abilities).length, 0);
  return workloadConfigs(plan).length * plan.runs * perRound;
}

/**
 * Memory one size needs while it runs: the workload, then either its images
 * (a chain is at most about 1.7× the size) or the memcpy reference's two
 * buffers; and some room for everything else.
 */
export function memoryNeeded(bytes: number): number {
  return 3 * bytes + 512 * 2 ** 20;
}
