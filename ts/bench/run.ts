/**
 * Runs a benchmark plan: starts each workload of the matrix (the bundled
 * program, so the benchmark only ever touches processes it started), and in
 * rounds alternates the modes on it (A B C A B C …): a lone pre-dump, then a
 * chain with dirty tracking (its first pre-dump, then incremental ones after
 * the workload rewrote a given fraction of its data). Beside the first
 * workload of each size it measures the references: memcpy of the same bytes,
 * process_vm_readv alone, and writing them into a new file where the images go.
 *
 * Every pre-dump is timed by the core (stopped window, drain, total); the
 * runner adds what only it can see: this process's peak memory during that
 * pre-dump, how many pages the workload really dirtied and how many of the
 * pages written fall in its data, and the workload's progress rate during the
 * pre-dump against just before it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PredumpError, fromNative } from '../errors.js';
import { PE_PRESENT, readPreDumpDir } from '../images/index.js';
import { native } from '../native.js';
import { preDump, type PreDumpModeName, type PreDumpResult, type TrackMem } from '../predump.js';
import { Workload } from '../workload.js';
import { currentRss, memAvailable, peakRss, resetPeakRss } from './machine.js';
import {
  cost,
  estimateSeconds,
  memoryNeeded,
  permille,
  stepsOf,
  workloadConfigs,
  type Abilities,
  type BenchMode,
  type BenchPlan,
  type Step,
  type WorkloadConfig,
} from './plan.js';

const PAGE = 4096;

/** One pre-dump, measured. Times in milliseconds. */
export interface Sample {
  mode: BenchMode;
  /** The mode the pre-dump reports it used ('read' after a splice fallback). */
  usedMode: string;
  fallback: string | null;
  sizeBytes: number;
  threads: number;
  churn: boolean;
  /** 'none' for a lone pre-dump. */
  trackMem: string;
  /** Null for a first pre-dump: nothing was dirtied before it. */
  dirtyRate: number | null;
  /** 0: a first (lone or tracked) pre-dump; k: the k-th incremental one at this dirty rate. */
  iteration: number;
  round: number;
  /** The time any thread of the workload was stopped (the core's stoppedWindowMs). */
  frozenMs: number;
  drainMs: number;
  totalMs: number;
  bytesWritten: number;
  pagesWritten: number;
  /** Pages the workload's `dirty` command rewrote before this pre-dump (incremental only). */
  pagesDirtied: number | null;
  /** Pages written that lie in the workload's data region (incremental only). */
  dataPagesWritten: number | null;
  /**
   * The peak resident memory a pre-dump process needs: this process's resident
   * size before it ran any (Node, the addon, predump's code: what `predump
   * pre-dump` has too) plus what its resident size grew by during this one.
   * Not this process's own peak, which holds whatever the benchmark kept.
   */
  peakRssBytes: number;
  pinnedBytes: number;
  /** The workload's compute rate during the pre-dump ÷ just before it (1: not slowed). */
  workloadSpeed: number;
}

export interface ReferenceSample {
  sizeBytes: number;
  /** The bytes copied: those of the workload's full pre-dump in the same round. */
  bytes: number;
  /** memcpy into a destination already written once (warm). */
  memcpyMs: number;
  /** memcpy into a destination never touched (it pays for its page faults). */
  memcpyFreshMs: number;
  /** process_vm_readv of every present page of the workload, nothing written. */
  pvrMs: number;
  /** Writing the bytes into a new file where the images go, then fsync. */
  writeMs: number;
}

export interface Skip {
  what: string;
  reason: string;
}

export interface RunOutput {
  samples: Sample[];
  references: ReferenceSample[];
  skipped: Skip[];
  notes: string[];
  /** Whether peak RSS could be reset before each pre-dump (else it is the lifetime peak). */
  peakRssPerRun: boolean;
}

export interface RunEvents {
  /** Something a person should know (a skip, a fallback). */
  note(message: string): void;
  /** Where the run is: `done` of `total` estimated seconds, and what it does now. */
  progress(done: number, total: number, what: string): void;
  /** A workload of the matrix is finished. */
  workloadDone(
    config: WorkloadConfig,
    seconds: number,
    done: number,
    total: number,
    left: number,
  ): void;
}

/**
 * Why preDump refused a mode as such (freeze-free before this predump has it),
 * or undefined for any other failure.
 */
function modeRefusal(err: unknown): string | undefined {
  const e = fromNative(err);
  return e.code === 'EINVAL' && /mode/i.test(e.message) ? e.message : undefined;
}

function interrupted(signal: AbortSignal): PredumpError {
  return new PredumpError('EINTERRUPTED', `interrupted (${String(signal.reason ?? 'aborted')})`);
}

interface ComputeProgress {
  at: number;
  iterations: number;
}

async function computeProgress(w: Workload): Promise<ComputeProgress> {
  const before = performance.now();
  const p = await w.command<{ compute: number[] }>('progress');
  const after = performance.now();
  return { at: (before + after) / 2, iterations: p.compute.reduce((a, b) => a + b, 0) };
}

const rate = (a: ComputeProgress, b: ComputeProgress): number =>
  (b.iterations - a.iterations) / Math.max(1e-3, b.at - a.at);

export const describeConfig = (c: WorkloadConfig): string =>
  `${c.size.label}, ${c.threads} thread${c.threads === 1 ? '' : 's'}, churn ${c.churn ? 'on' : 'off'}`;

function shortStep(step: Step): string {
  if (step.kind !== 'incremental') return step.kind;
  return `+${+((step.dirtyRate ?? 0) * 100).toFixed(1)}% #${step.iteration}`;
}

export function describeStep(step: Step): string {
  if (step.kind === 'lone') return 'lone pre-dump';
  if (step.kind === 'first') return 'first tracked pre-dump';
  return `incremental ${((step.dirtyRate ?? 0) * 100).toFixed(1).replace(/\.0$/, '')}% #${step.iteration}`;
}

export async function runBench(
  plan: BenchPlan,
  abilities: Abilities,
  events: RunEvents,
  signal: AbortSignal,
): Promise<RunOutput> {
  const runner = new Runner(plan, abilities, events, signal);
  return runner.run();
}

class Runner {
  private readonly out: RunOutput = {
    samples: [],
    references: [],
    skipped: [],
    notes: [],
    peakRssPerRun: true,
  };
  /** Modes the installed preDump refused: skipped from then on. */
  private readonly rejected = new Set<BenchMode>();
  private readonly skippedSizes = new Set<number>();
  private done = 0;
  private total: number;
  private seed = 1;
  private tmp = '';
  private doing = '';
  private readonly cpus = os.cpus().length;
  /** This process's resident size before any pre-dump: a pre-dump process's base. */
  private baseRss = 0;

  constructor(
    private readonly plan: BenchPlan,
    private readonly abilities: Abilities,
    private readonly events: RunEvents,
    private readonly signal: AbortSignal,
  ) {
    this.total = estimateSeconds(plan, abilities, this.cpus);
  }

  private note(message: string): void {
    this.out.notes.push(message);
    this.events.note(message);
  }

  private skip(what: string, reason: string): void {
    this.out.skipped.push({ what, reason });
    this.note(`skipped ${what}: ${reason}`);
  }

  private check(): void {
    if (this.signal.aborted) throw interrupted(this.signal);
  }

  /** The plan without what was skipped: the total of the progress. */
  private replan(): void {
    this.total = estimateSeconds(
      {
        ...this.plan,
        sizes: this.plan.sizes.filter((s) => !this.skippedSizes.has(s.bytes)),
        modes: this.plan.modes.filter((m) => !this.rejected.has(m)),
      },
      this.abilities,
      this.cpus,
    );
  }

  private advance(seconds: number, what?: string): void {
    this.done += seconds;
    if (what !== undefined) this.doing = what;
    this.events.progress(this.done, this.total, this.doing);
  }

  async run(): Promise<RunOutput> {
    this.baseRss = await currentRss();
    this.tmp = await mkdtemp(path.join(this.plan.dir, 'predump-bench-')).catch((err: unknown) => {
      throw new PredumpError(
        'EDIR',
        `cannot make a directory for the images in ${this.plan.dir}: ${(err as Error).message}`,
      );
    });
    try {
      const configs = workloadConfigs(this.plan);
      for (const [i, config] of configs.entries()) {
        this.check();
        if (this.skippedSizes.has(config.size.bytes)) continue;
        const need = memoryNeeded(config.size.bytes);
        const available = await memAvailable();
        if (available < need) {
          this.skippedSizes.add(config.size.bytes);
          this.skip(
            `size ${config.size.label}`,
            `it needs about ${gib(need)} GiB of free memory (the workload, its images or the ` +
              `memcpy reference's two buffers), and ${gib(available)} GiB is available`,
          );
          this.replan();
          continue;
        }
        const started = performance.now();
        await this.runWorkload(config);
        this.events.workloadDone(
          config,
          (performance.now() - started) / 1000,
          this.done,
          this.total,
          configs.slice(i + 1).filter((c) => !this.skippedSizes.has(c.size.bytes)).length,
        );
      }
    } finally {
      await rm(this.tmp, { recursive: true, force: true });
    }
    if (this.out.samples.length === 0) {
      throw new PredumpError(
        'ENOTHING',
        `nothing was measured: ${this.out.skipped.map((s) => `${s.what} (${s.reason})`).join('; ')}`,
      );
    }
    return this.out;
  }

  private async runWorkload(config: WorkloadConfig): Promise<void> {
    // Short: the progress line must fit a terminal.
    const what = `${config.size.label} ${config.threads}t${config.churn ? ' churn' : ''}`;
    this.advance(0, `${what}: starting the workload`);
    const w = await Workload.start({
      sizeBytes: config.size.bytes,
      threads: config.threads,
      churn: config.churn,
    });
    try {
      await this.waitComputing(w);
      this.advance(cost.workloadStart(config.size.bytes));
      for (let round = 1; round <= this.plan.runs; round++) {
        let fullBytes = 0;
        for (const mode of this.plan.modes) {
          if (this.rejected.has(mode)) continue;
          this.check();
          const where = `${what} run ${round}/${this.plan.runs}`;
          const bytes = await this.runMode(w, config, mode, round, where);
          if (bytes > 0 && fullBytes === 0) fullBytes = bytes;
        }
        if (config.references) {
          this.check();
          this.advance(0, `${what} run ${round}/${this.plan.runs}: memcpy, readv, write`);
          await this.measureReferences(w, config, fullBytes || config.size.bytes);
          this.advance(cost.references(config.size.bytes));
        }
      }
    } finally {
      await native.untrack(w.pid).catch(() => false);
      await w.stop();
    }
  }

  /** Waits (a bounded number of looks) until every compute thread has made progress. */
  private async waitComputing(w: Workload): Promise<void> {
    const first = (await w.command<{ compute: number[] }>('progress')).compute;
    for (let i = 0; i < 500; i++) {
      const now = (await w.command<{ compute: number[] }>('progress')).compute;
      if (now.every((n, k) => n > first[k]!)) return;
      await sleep(10);
    }
    throw new PredumpError('EWORKLOAD', `workload ${w.pid}: its compute threads do not run`);
  }

  /**
   * One mode's turn in a round: its lone pre-dump, then its chain. Returns the
   * bytes its first full pre-dump wrote (0 if none ran).
   */
  private async runMode(
    w: Workload,
    config: WorkloadConfig,
    mode: BenchMode,
    round: number,
    where: string,
  ): Promise<number> {
    // Whatever an earlier chain armed is ended: a lone pre-dump sees an untracked
    // workload, and the chain's first pre-dump arms the tracking afresh.
    await native.untrack(w.pid).catch((err: unknown) => {
      throw fromNative(err);
    });
    this.advance(cost.untrack(config.size.bytes));
    const chain = await mkdtemp(path.join(this.tmp, `${mode}-`));
    let fullBytes = 0;
    try {
      let prev: string | undefined;
      const steps = stepsOf(this.plan, mode, this.abilities);
      for (const [i, step] of steps.entries()) {
        this.check();
        this.advance(0, `${where}: ${mode} ${shortStep(step)}`);
        let pagesDirtied: number | null = null;
        if (step.kind === 'incremental') {
          const rate = step.dirtyRate ?? 0;
          pagesDirtied = rate > 0 ? (await w.dirty(permille(rate), this.seed++)).dirtied : 0;
        }
        const dir = path.join(chain, `${i}-${step.kind}`);
        // Freeze-free mode is uffd-wp's (it re-arms without a freeze), whatever 'auto' picks.
        const trackMem =
          step.kind === 'lone'
            ? 'none'
            : mode === 'freeze-free'
              ? 'uffd-wp'
              : this.abilities.trackMem;
        const sample = await this.measure(w, config, mode, step, round, dir, {
          trackMem,
          prev,
          pagesDirtied,
        });
        this.advance(cost.preDump(this.plan, step, config.size.bytes, config.threads, this.cpus));
        if (typeof sample === 'string') {
          this.rejected.add(mode);
          this.skip(`mode ${mode}`, `preDump() refused it: ${sample}`);
          this.replan();
          break;
        }
        this.out.samples.push(sample);
        if (step.kind !== 'incremental' && fullBytes === 0) fullBytes = sample.bytesWritten;
        if (step.kind === 'lone') await rm(dir, { recursive: true, force: true });
        else prev = dir;
      }
    } finally {
      await rm(chain, { recursive: true, force: true });
    }
    return fullBytes;
  }

  /** One pre-dump, with the workload's rate sampled before and across it. */
  private async measure(
    w: Workload,
    config: WorkloadConfig,
    mode: BenchMode,
    step: Step,
    round: number,
    dir: string,
    o: { trackMem: string; prev: string | undefined; pagesDirtied: number | null },
  ): Promise<Sample | string> {
    let a = await computeProgress(w);
    await sleep(this.plan.sampleMs);
    let b = await computeProgress(w);
    // A window in which the compute threads got no CPU at all says nothing: look longer.
    for (let i = 0; i < 5 && rate(a, b) <= 0; i++) {
      a = b;
      await sleep(this.plan.sampleMs * 2);
      b = await computeProgress(w);
    }
    const before = rate(a, b);
    const reset = await resetPeakRss();
    if (!reset) this.out.peakRssPerRun = false;
    const rssBefore = await currentRss();
    let r: PreDumpResult;
    try {
      r = await preDump({
        pid: w.pid,
        imagesDir: dir,
        // 'freeze-free' is passed as is: a preDump without it refuses it (then skipped).
        mode: mode as PreDumpModeName,
        trackMem: o.trackMem as TrackMem,
        prevImagesDir: o.prev,
        signal: this.signal,
      });
    } catch (err) {
      const refusal = mode === 'freeze-free' && step.kind !== 'incremental' && modeRefusal(err);
      if (refusal) return refusal;
      throw fromNative(err);
    }
    const peak = reset ? this.baseRss + Math.max(0, (await peakRss()) - rssBefore) : r.peakRssBytes;
    const c = await computeProgress(w);
    if (r.partial) {
      throw new PredumpError('EWORKLOAD', `workload ${w.pid} exited during a pre-dump`);
    }
    if (r.fallback && !this.out.notes.some((n) => n.includes(r.fallback ?? ''))) {
      this.note(`${mode} mode fell back to ${r.mode} mode: ${r.fallback}`);
    }
    if (r.trackNote && step.kind === 'incremental') {
      this.note(`${mode}, ${describeStep(step)}: ${r.trackNote}`);
    }
    let dataPagesWritten: number | null = null;
    if (step.kind === 'incremental') {
      const images = await readPreDumpDir(dir);
      dataPagesWritten = pagesWithin(images.entries, w.data.start, w.data.bytes);
    }
    return {
      mode,
      usedMode: r.mode,
      fallback: r.fallback,
      sizeBytes: config.size.bytes,
      threads: config.threads,
      churn: config.churn,
      trackMem: o.trackMem,
      dirtyRate: step.dirtyRate,
      iteration: step.iteration,
      round,
      frozenMs: r.stoppedWindowMs,
      drainMs: r.drainMs,
      totalMs: r.totalMs,
      bytesWritten: r.bytesWritten,
      pagesWritten: r.pagesWritten,
      pagesDirtied: o.pagesDirtied,
      dataPagesWritten,
      peakRssBytes: peak,
      pinnedBytes: r.pinnedBytes,
      workloadSpeed: rate(b, c) / before,
    };
  }

  private async measureReferences(
    w: Workload,
    config: WorkloadConfig,
    bytes: number,
  ): Promise<void> {
    const wrap = <T>(p: Promise<T>): Promise<T> =>
      p.catch((err: unknown) => {
        throw fromNative(err);
      });
    const memcpy = await wrap(native.memcpyReference(bytes));
    const pvr = await wrap(native.readvReference(w.pid));
    const writeMs = await wrap(native.writeReference(this.tmp, bytes));
    this.out.references.push({
      sizeBytes: config.size.bytes,
      bytes,
      memcpyMs: memcpy.warmMs,
      memcpyFreshMs: memcpy.freshMs,
      pvrMs: pvr.ms,
      writeMs,
    });
  }
}

/** PE_PRESENT pages of `entries` inside [start, start + bytes). */
export function pagesWithin(
  entries: readonly { vaddr: number; nrPages: number; flags: number }[],
  start: number,
  bytes: number,
): number {
  const end = start + bytes;
  let n = 0;
  for (const e of entries) {
    if ((e.flags & PE_PRESENT) === 0) continue;
    const lo = Math.max(start, e.vaddr);
    const hi = Math.min(end, e.vaddr + e.nrPages * PAGE);
    if (hi > lo) n += (hi - lo) / PAGE;
  }
  return n;
}

const gib = (bytes: number): string => (bytes / 2 ** 30).toFixed(1);
