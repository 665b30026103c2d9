/**
 * `predump bench`: read, splice and freeze-free pre-dumps of the bundled
 * workload side by side, with memcpy and process_vm_readv of the same size
 * measured in the same run; a table, JSON and an SVG chart.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, open, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Argv } from 'yargs';
import { EXIT, fromNative, PredumpError } from '../errors.js';
import { native } from '../native.js';
import { renderChart } from '../bench/chart.js';
import { cpuBusy, describeMachine } from '../bench/machine.js';
import {
  BENCH_MODES,
  countPreDumps,
  DEFAULTS,
  estimateSeconds,
  parseChurn,
  parseDirtyRates,
  parseInteger,
  parseModes,
  parseSizes,
  parseThreads,
  QUICK,
  workloadConfigs,
  type Abilities,
  type BenchPlan,
  type WorkloadConfig,
} from '../bench/plan.js';
import { buildReport } from '../bench/report.js';
import { describeConfig, runBench, type RunEvents } from '../bench/run.js';
import { renderTable } from '../bench/table.js';
import { exitStatusHelp, STATUS } from './options.js';
import { inform, printJson, reportError, say, write, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

const defaultDir = (): string => (existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir());

export function builder(yargs: Argv) {
  return yargs
    .option('sizes', {
      type: 'string',
      describe: `workload sizes, comma-separated (K, M, G); sizes free memory cannot hold (3× the size) are skipped [default: ${DEFAULTS.sizes}; --quick: ${QUICK.sizes}]`,
    })
    .option('modes', {
      type: 'string',
      describe: `modes to compare, alternating: ${BENCH_MODES.join(', ')} (freeze-free where the kernel has uffd-wp) [default: all]`,
    })
    .option('threads', {
      type: 'string',
      describe: `compute threads of the workload, comma-separated [default: ${DEFAULTS.threads}; --quick: ${QUICK.threads}]`,
    })
    .option('dirty-rates', {
      type: 'string',
      describe: `percent of the workload's data rewritten before each incremental pre-dump [default: ${DEFAULTS.dirtyRates}; --quick: ${QUICK.dirtyRates}]`,
    })
    .option('churn', {
      type: 'string',
      describe: `the workload's address-space churn: off, on or off,on [default: ${DEFAULTS.churn}; --quick: ${QUICK.churn}]`,
    })
    .option('iterations', {
      type: 'string',
      describe: `incremental pre-dumps per dirty rate after the first of a chain [default: ${DEFAULTS.iterations}]`,
    })
    .option('runs', {
      type: 'string',
      describe: `repetitions of everything, for median, min and max [default: ${DEFAULTS.runs}]`,
    })
    .option('quick', {
      type: 'boolean',
      default: false,
      describe: `a small run (well under a minute): ${QUICK.sizes}, ${QUICK.threads} thread, ${QUICK.dirtyRates}% dirtied, churn ${QUICK.churn}`,
    })
    .option('dir', {
      type: 'string',
      describe: 'where the images go (a temporary directory inside it) [default: /dev/shm]',
    })
    .option('chart', {
      type: 'string',
      describe: 'also write an SVG chart of stopped and total time per size and mode here',
    })
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'print the results as one JSON object on stdout instead of the table',
    })
    .option('startup', {
      type: 'boolean',
      default: false,
      describe:
        "instead: predump's start-up (whole processes, beside node -e 0), and whole read-mode " +
        `pre-dumps beside CRIU's with --criu [--sizes default: ${STARTUP_DEFAULTS.sizes}; --runs: ${STARTUP_DEFAULTS.runs}, and twice as many rounds plus one of the start-up]`,
    })
    .option('page-server', {
      type: 'boolean',
      default: false,
      describe:
        'instead: pre-dumps streamed to predump page-server on loopback, beside a plain TCP send ' +
        `of the same bytes and a local pre-dump [--sizes default: ${PAGE_SERVER_DEFAULTS.sizes}; --modes: read,splice; --runs: ${PAGE_SERVER_DEFAULTS.runs}]`,
    })
    .option('tree', {
      type: 'boolean',
      default: false,
      describe:
        'instead: read- and splice-mode pre-dumps of a tree of processes sharing memory, beside one process of the same size ' +
        `[--sizes default: ${TREE_DEFAULTS.sizes} (the whole tree); --threads: ${TREE_DEFAULTS.threads} per process; --runs: ${TREE_DEFAULTS.runs}]`,
    })
    .option('processes', {
      type: 'string',
      describe: `with --tree: processes in the tree [default: ${TREE_DEFAULTS.processes}]`,
    })
    .option('shared-percent', {
      type: 'string',
      describe: `with --tree: percent of the size in one region every process shares [default: ${TREE_DEFAULTS.sharedPercent}]`,
    })
    .option('criu', {
      type: 'string',
      describe: 'with --startup: the criu executable to compare with (4.2 or later)',
    })
    .example('predump bench', 'the whole matrix (20–30 min on 2 CPUs)')
    .example('predump bench --quick', 'a quick look')
    .example(
      'predump bench --sizes 256M,1G --modes read,splice --chart bench.svg',
      'narrowed, with a chart',
    )
    .example('predump bench --json > bench.json', 'for scripts')
    .example('predump bench --tree', 'a tree of 100 processes, 1 GiB, a quarter shared')
    .example(
      'predump bench --page-server --sizes 256M,1G',
      'throughput to a page server against TCP (docs/PAGE-SERVER.md)',
    )
    .example(
      'predump bench --startup --criu /opt/criu-4.2/criu',
      'start-up, and whole pre-dumps beside CRIU',
    )
    .epilogue(
      'For each workload (size × threads × churn) it alternates the modes, round after round: ' +
        'a lone pre-dump (no tracking), then a chain with dirty tracking: its first pre-dump ' +
        'and, per dirty rate, --iterations incremental ones after the workload rewrote that ' +
        'share of its data. Beside the first workload of each size it measures memcpy of the ' +
        'same bytes (warm destination; "fresh" = never touched), process_vm_readv alone, and ' +
        'writing them into a new file where the images go.\n\n' +
        'frozen: the time any thread of the workload was stopped (stoppedWindowMs). total: the ' +
        'whole pre-dump, as preDump() times it. drain: from thaw to the pages synced. written: ' +
        'pages in the data the workload rewrote + its other pages. peak RSS: what a pre-dump ' +
        "process needs (the bench's resident size at its start, plus what it grew by during " +
        'that pre-dump). pinned: memory held in pipes ' +
        "(splice). workload speed: the workload's compute rate during the pre-dump ÷ just " +
        'before it. Every figure: median [min–max]. Progress goes to stderr.\n\n' +
        'With --startup it measures instead what the command line costs before it works: ' +
        "whole processes beside 'node -e 0', taking turns (a pre-dump of a pid that cannot " +
        "exist: loaded, asked the kernel, refused; 'show'; '--help'), then whole read-mode " +
        "pre-dumps of a workload per size, predump's (--track-mem none) and, with --criu, " +
        "'criu pre-dump --pre-dump-mode read' in turns (docs/STARTUP.md).\n\n" +
        'With --page-server: per size and mode, pre-dumps sent to a predump page-server on ' +
        '127.0.0.1, a plain TCP send of as many bytes, and a local pre-dump, in turns; ' +
        "throughput, the target's stopped time and the server's peak RSS (docs/PAGE-SERVER.md).\n\n" +
        'With --tree: read- and splice-mode pre-dumps of the workload as a tree of --processes processes ' +
        '(--shared-percent of --sizes in one shared region, the rest private, split evenly), ' +
        'beside a pre-dump of one process of the same size and a memcpy, in turns (docs/TREES.md).\n\n' +
        'It starts and stops its own workloads and never touches another process.\n\n' +
        exitStatusHelp([
          ['0', 'done (missed goals are reported, not failed)'],
          ['1', 'the benchmark failed'],
          STATUS.usage,
          ['130, 143', 'interrupted by SIGINT / SIGTERM: workloads stopped, images removed'],
        ]),
    );
}

export async function handler(args: Args): Promise<void> {
  process.exitCode = await dispatch(args).catch((err: unknown) => reportError(err, args.json));
}

/** The benchmark the options ask for, after the checks that concern them all. */
async function dispatch(args: Args): Promise<number> {
  if ([args.startup, args.pageServer, args.tree].filter(Boolean).length > 1) {
    throw usage('--startup, --page-server and --tree are separate benchmarks: give one');
  }
  const treeOnly = firstGiven(args, ['processes', 'sharedPercent']);
  if (!args.tree && treeOnly !== undefined) throw usage(`${treeOnly} is an option of --tree`);
  if (args.startup) return runStartup(args);
  if (args.pageServer) return runPageServer(args);
  if (args.tree) return runTree(args);
  return run(args);
}

/** The first of `keys` given on the command line, as its flag (dirtyRates: --dirty-rates). */
function firstGiven(args: Args, keys: readonly string[]): string | undefined {
  const key = keys.find((k) => {
    const v = args[k as keyof Args];
    return v !== undefined && v !== false;
  });
  return key === undefined ? undefined : `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** Says so when others' work keeps the CPUs busy now; the share of their time in use. */
async function noteIfBusy(): Promise<number | undefined> {
  const busy = await cpuBusy(1000);
  if (busy !== undefined && busy > 0.25) {
    say(
      `predump bench: note: the machine is busy (${(busy * 100).toFixed(0)}% of its CPUs' ` +
        'time in use): the figures are noisier',
    );
  }
  return busy;
}

/**
 * Runs one of the smaller benchmarks (--startup, --page-server, --tree): progress on one
 * redrawn line of a terminal (none with --json), then its report as JSON or as its table.
 */
async function runReported<R extends object>(
  json: boolean,
  bench: (
    events: { note: (m: string) => void; step: (m: string) => void },
    command: string,
  ) => Promise<R>,
  render: (report: R) => string,
  beforePrint?: (report: R) => void,
): Promise<number> {
  const tty = process.stderr.isTTY === true && !json;
  const report = await bench(
    {
      note: (m) => say(`predump bench: ${m}`),
      step: (m) => {
        if (tty) write(process.stderr, `\r\x1b[K${m}`);
      },
    },
    ['predump', 'bench', ...process.argv.slice(3)].join(' '),
  );
  if (tty) write(process.stderr, '\r\x1b[K');
  beforePrint?.(report);
  if (json) printJson(report);
  else write(process.stdout, render(report));
  return EXIT.ok;
}

const TREE_DEFAULTS = {
  sizes: '1G',
  processes: '100',
  sharedPercent: '25',
  threads: '0',
  runs: '5',
};

/** The options of the mode matrix that --tree does not take. */
const NOT_TREE = ['modes', 'dirtyRates', 'churn', 'iterations', 'quick', 'chart', 'criu'];

/** `predump bench --tree`. */
async function runTree(args: Args): Promise<number> {
  const given = firstGiven(args, NOT_TREE);
  if (given !== undefined) throw usage(`${given} is not an option of --tree`);
  const dir = last(args.dir) ?? defaultDir();
  await checkDir(dir);
  const plan = {
    sizes: parseSizes(last(args.sizes) ?? TREE_DEFAULTS.sizes),
    processes: parseInteger(
      last(args.processes) ?? TREE_DEFAULTS.processes,
      '--processes',
      2,
      1000,
    ),
    sharedPercent: parseInteger(
      last(args.sharedPercent) ?? TREE_DEFAULTS.sharedPercent,
      '--shared-percent',
      0,
      90,
    ),
    threads: parseInteger(last(args.threads) ?? TREE_DEFAULTS.threads, '--threads', 0, 16),
    runs: parseInteger(last(args.runs) ?? TREE_DEFAULTS.runs, '--runs', 1, 1000),
    dir,
  };
  const { renderTreeTable, runTreeBench } = await import('../bench/tree.js');
  await noteIfBusy();
  return runReported(
    args.json,
    (events, command) => runTreeBench(plan, events, command),
    renderTreeTable,
  );
}

const PAGE_SERVER_DEFAULTS = { sizes: '256M,1G', modes: 'read,splice', runs: '5' };

/** The options of the mode matrix that --page-server does not take. */
const NOT_PAGE_SERVER = [
  'threads',
  'dirtyRates',
  'churn',
  'iterations',
  'quick',
  'chart',
  'criu',
  'processes',
  'sharedPercent',
];

/** `predump bench --page-server`. */
async function runPageServer(args: Args): Promise<number> {
  const given = firstGiven(args, NOT_PAGE_SERVER);
  if (given !== undefined) throw usage(`${given} is not an option of --page-server`);
  const dir = last(args.dir) ?? defaultDir();
  await checkDir(dir);
  const modes = (last(args.modes) ?? PAGE_SERVER_DEFAULTS.modes).split(',').map((m) => m.trim());
  for (const m of modes) {
    if (m !== 'read' && m !== 'splice') {
      throw usage(`--modes: '${m}' is not a page-server mode here (read, splice)`);
    }
  }
  const plan = {
    sizes: parseSizes(last(args.sizes) ?? PAGE_SERVER_DEFAULTS.sizes),
    modes: [...new Set(modes)] as ('read' | 'splice')[],
    runs: parseInteger(last(args.runs) ?? PAGE_SERVER_DEFAULTS.runs, '--runs', 1, 1000),
    dir,
  };
  const { renderPageServerTable, runPageServerBench } = await import('../bench/page-server.js');
  await noteIfBusy();
  return runReported(
    args.json,
    (events, command) => runPageServerBench(plan, events, command),
    renderPageServerTable,
  );
}

const STARTUP_DEFAULTS = { sizes: '256M,1G', runs: '7' };

/** The options of the mode matrix, which --startup does not run. */
const MATRIX_ONLY = ['modes', 'threads', 'dirtyRates', 'churn', 'iterations', 'quick', 'chart'];

/** `predump bench --startup`. */
async function runStartup(args: Args): Promise<number> {
  const given = firstGiven(args, MATRIX_ONLY);
  if (given !== undefined) {
    throw usage(`${given} is an option of the mode benchmark, not of --startup`);
  }
  const dir = last(args.dir) ?? defaultDir();
  await checkDir(dir);
  const criu = last(args.criu);
  const runs = parseInteger(last(args.runs) ?? STARTUP_DEFAULTS.runs, '--runs', 1, 1000);
  const plan = {
    sizes: parseSizes(last(args.sizes) ?? STARTUP_DEFAULTS.sizes),
    runs,
    // The start-up commands are short: twice the rounds, odd for a median that was measured.
    startupRuns: 2 * runs + 1,
    criu: criu ?? null,
    dir,
  };
  const { criuVersion, renderStartupTable, runStartupBench } = await import('../bench/startup.js');
  if (criu !== undefined)
    inform(`predump bench: comparing with CRIU ${criuVersion(criu)} (${criu})`);
  const busy = await noteIfBusy();
  return runReported(
    args.json,
    (events, command) => runStartupBench(plan, events, command),
    renderStartupTable,
    (report) => {
      if (busy !== undefined && busy > 0.25) {
        report.notes.push(
          `the machine was busy at the start (${(busy * 100).toFixed(0)}% CPU in use)`,
        );
      }
    },
  );
}

const usage = (message: string): PredumpError => new PredumpError('EUSAGE', message);

/** The plan from the command line: every value checked before anything starts. */
export async function planFrom(args: Args): Promise<BenchPlan> {
  const d = args.quick ? QUICK : DEFAULTS;
  const dir = last(args.dir) ?? defaultDir();
  await checkDir(dir);
  return {
    sizes: parseSizes(last(args.sizes) ?? d.sizes),
    threads: parseThreads(last(args.threads) ?? d.threads),
    dirtyRates: parseDirtyRates(last(args.dirtyRates) ?? d.dirtyRates),
    churn: parseChurn(last(args.churn) ?? d.churn),
    modes: parseModes(last(args.modes) ?? d.modes),
    iterations: parseInteger(last(args.iterations) ?? d.iterations, '--iterations', 1, 100),
    runs: parseInteger(last(args.runs) ?? d.runs, '--runs', 1, 1000),
    dir,
    sampleMs: d.sampleMs,
    quick: args.quick,
  };
}

/**
 * An option given twice (`npm run bench:predump -- --sizes 1G` after the script's
 * own --sizes) arrives as an array: the last one counts, as it would elsewhere.
 */
function last(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[value.length - 1] : value;
}

/** --dir must be a directory we can make a directory in. */
async function checkDir(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (st === undefined) throw usage(`--dir ${dir} does not exist`);
  if (!st.isDirectory()) throw usage(`--dir ${dir} is not a directory`);
  try {
    await rmdir(await mkdtemp(path.join(dir, '.predump-bench-check-')));
  } catch (err) {
    throw usage(`--dir ${dir} is not writable: ${(err as Error).message}`);
  }
}

/** --chart must be writable now, not after a quarter of an hour of measuring. */
async function checkChart(file: string): Promise<void> {
  const st = await stat(file).catch(() => undefined);
  if (st?.isDirectory())
    throw usage(`--chart ${file} is a directory: give a file such as bench.svg`);
  try {
    if (st) {
      await (await open(file, 'r+')).close();
    } else {
      await (await open(file, 'wx')).close();
      await unlink(file);
    }
  } catch (err) {
    throw usage(`--chart ${file} cannot be written: ${(err as Error).message}`);
  }
}

const minutes = (s: number): string =>
  s < 90 ? `${Math.max(1, Math.round(s))} s` : `${(s / 60).toFixed(s < 600 ? 1 : 0)} min`;

/** The progress line on a terminal, lines per workload elsewhere. */
class Progress implements RunEvents {
  /** Drawn on a terminal, but not with --json (stderr only for warnings and errors then). */
  private readonly tty: boolean;
  constructor(json: boolean) {
    this.tty = process.stderr.isTTY === true && !json;
  }
  private readonly started = performance.now();
  private lastDraw = 0;
  private drawn = false;

  /** About how long the rest takes, from the time model scaled by the time taken so far. */
  private left(done: number, total: number): string | undefined {
    const elapsed = (performance.now() - this.started) / 1000;
    if (done <= 0) return undefined;
    return `${minutes((elapsed * Math.max(0, total - done)) / done)} left`;
  }

  private clear(): void {
    if (this.drawn) write(process.stderr, '\r\x1b[K');
    this.drawn = false;
  }

  note(message: string): void {
    this.clear();
    say(`predump bench: ${message}`);
  }

  progress(done: number, total: number, what: string): void {
    if (!this.tty) return;
    const now = performance.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const pct = total > 0 ? Math.min(99, Math.floor((done / total) * 100)) : 0;
    const left = this.left(done, total);
    const line = `[${String(pct).padStart(2)}%${left ? `, ${left}` : ''}] ${what}`;
    const columns = process.stderr.columns ?? 0;
    const width = columns >= 20 ? columns : 100;
    write(process.stderr, `\r\x1b[K${line.slice(0, width - 1)}`);
    this.drawn = true;
  }

  workloadDone(
    config: WorkloadConfig,
    seconds: number,
    done: number,
    total: number,
    left: number,
  ): void {
    if (this.tty) return;
    const rest = this.left(done, total);
    const more = left > 0 ? `; ${left} more${rest ? ` (about ${rest})` : ''}` : '';
    inform(`predump bench: ${describeConfig(config)}: done in ${minutes(seconds)}${more}`);
  }

  end(): void {
    this.clear();
  }
}

async function run(args: Args): Promise<number> {
  if (args.criu !== undefined) throw usage('--criu is an option of --startup');
  const plan = await planFrom(args);
  const chart = last(args.chart);
  if (chart !== undefined) await checkChart(chart);

  const check = await native.checkKernel().catch((err: unknown) => {
    throw fromNative(err);
  });
  const progress = new Progress(args.json);
  const uffdWp = check.capabilities.some((c) => c.name === 'uffd-wp' && c.supported);
  const abilities: Abilities = { trackMem: check.trackMemAuto };
  const notes: string[] = [];
  if (abilities.trackMem === 'none') {
    notes.push('no dirty tracking here (neither soft-dirty nor uffd-wp): no incremental runs');
  }
  // As `predump check` decides it: read mode's calls and uffd-wp in async mode.
  if (plan.modes.includes('freeze-free') && !(uffdWp && check.readMode)) {
    plan.modes = plan.modes.filter((m) => m !== 'freeze-free');
    notes.push('freeze-free mode needs uffd-wp (async), which this kernel does not have: not run');
  }
  if (plan.modes.includes('splice') && !check.spliceMode) {
    notes.push('splice mode is not possible here: its runs fall back to read mode');
  }
  // Others' work now, not the load average, which lags by minutes.
  const busy = await cpuBusy(1000);
  if (busy !== undefined && busy > 0.25) {
    notes.push(
      `the machine was busy when the run started (${(busy * 100).toFixed(0)}% of its ` +
        `${os.cpus().length} CPUs' time in use): the figures are noisier and the run longer`,
    );
  }
  for (const n of notes) progress.note(n);
  if (plan.modes.length === 0) {
    throw new PredumpError('ENOTHING', 'none of the requested modes can run on this machine');
  }

  const configs = workloadConfigs(plan);
  inform(
    `predump bench: ${configs.length} workload(s) × ${plan.runs} run(s), ` +
      `${countPreDumps(plan, abilities)} pre-dumps in ${plan.modes.join(', ')} mode; sizes ` +
      `${plan.sizes.map((s) => s.label).join(', ')}; images in ${plan.dir}; ` +
      `estimated ${minutes(estimateSeconds(plan, abilities, os.cpus().length))}`,
  );
  const machine = await describeMachine(check, plan.dir, abilities.trackMem, busy);
  const started = performance.now();

  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    progress.note(`${sig}: stopping after the current step (never while a workload is frozen)`);
    abort.abort(sig);
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  let out;
  try {
    out = await runBench(plan, abilities, progress, abort.signal);
  } catch (err) {
    progress.end();
    if (abort.signal.aborted) {
      reportError(err, args.json);
      say('predump bench: interrupted: its workloads were stopped and its images removed');
      return abort.signal.reason === 'SIGINT' ? 130 : 143;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
  progress.end();
  out.notes.unshift(...notes);

  const report = buildReport(
    plan,
    out,
    {
      ...machine,
      loadAvgEnd: os.loadavg().map((x) => Math.round(x * 100) / 100),
      durationS: Math.round((performance.now() - started) / 100) / 10,
    },
    ['predump', 'bench', ...process.argv.slice(3)].join(' '),
  );
  if (args.json) printJson(report);
  else write(process.stdout, renderTable(report));
  if (chart !== undefined) {
    await writeFile(chart, renderChart(report));
    inform(`predump bench: chart written to ${chart}`);
  }
  const met = report.goals.filter((g) => g.met === true).length;
  const missed = report.goals.filter((g) => g.met === false).length;
  inform(
    `predump bench: done in ${minutes(report.machine.durationS)}; goals: ${met} met, ` +
      `${missed} missed, ${report.goals.length - met - missed} not measured at these sizes`,
  );
  return EXIT.ok;
}
