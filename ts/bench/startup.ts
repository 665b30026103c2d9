/**
 * `predump bench --startup`: what predump's command line costs before it does any work,
 * beside `node -e 0` (Node's own start-up, which no Node program can go under), and a
 * whole `predump pre-dump` beside a whole `criu pre-dump` of the same target, the two
 * taking turns run after run. Every figure is the wall time of a whole process, from
 * spawn to exit, as a user (or a migration script running pre-dump after pre-dump) waits
 * for it.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PredumpError } from '../errors.js';
import { readPreDumpDir } from '../images/index.js';
import { packageRoot } from '../native.js';
import type { Size } from './plan.js';
import { rounded, stat, type Stat } from './stats.js';

/** The format of the report (`version`): raised when a field changes meaning. */
export const STARTUP_REPORT_VERSION = 1;

/** The goal of issue 16: predump ready to work within this of `node -e 0`. */
export const READY_GOAL_MS = 60;

export interface StartupPlan {
  sizes: Size[];
  /** Rounds of the whole pre-dumps (each: predump and CRIU, in alternating order). */
  runs: number;
  /** Rounds of the start-up commands. */
  startupRuns: number;
  /** CRIU's executable, or null: CRIU is not measured. */
  criu: string | null;
  /** Where the images go (a temporary directory inside it). */
  dir: string;
}

export interface StartupEvents {
  note(message: string): void;
  step(what: string): void;
}

/** One start-up command, timed as a whole process. */
export interface StartupRow {
  id: string;
  /** What it does, for the table. */
  what: string;
  argv: string[];
  /** Its exit status (every run had it). */
  status: number;
  wallMs: Stat;
  /** Its CPU time (user + system), which others' work on the machine hardly changes. */
  cpuMs: Stat;
  /** Its median wall time ÷ that of `node -e 0`. */
  xNode: number;
  /** Its median CPU time ÷ that of `node -e 0`. */
  cpuXNode: number | null;
}

/** One tool's whole pre-dumps of one size. */
export interface PreDumpTimes {
  argv: string[];
  wallMs: Stat;
  /**
   * CPU time (user + system, all threads): the copy's work and, for predump, Node's start;
   * others' work on the machine changes it far less than the wall time.
   */
  cpuMs: Stat;
  /** Freezing plus frozen: the time any thread of the target was stopped. */
  stoppedMs: Stat;
  pagesWritten: Stat;
}

export interface PreDumpRow {
  sizeBytes: number;
  label: string;
  runs: number;
  predump: PreDumpTimes;
  criu: PreDumpTimes | null;
  /** predump's median wall time ÷ CRIU's. */
  wallRatio: number | null;
  /** predump's median CPU time ÷ CRIU's. */
  cpuRatio: number | null;
}

export interface StartupGoal {
  id: string;
  goal: string;
  measured: number | null;
  target: number;
  unit: string;
  met: boolean | null;
  detail: string;
}

export interface StartupReport {
  version: typeof STARTUP_REPORT_VERSION;
  ok: true;
  command: string;
  machine: {
    cpus: number;
    kernel: string;
    node: string;
    criu: string | null;
    imagesDir: string;
    loadAvgStart: number[];
    loadAvgEnd: number[];
    startedAt: string;
    durationS: number;
  };
  startup: { runs: number; rows: StartupRow[] };
  preDump: PreDumpRow[];
  goals: StartupGoal[];
  notes: string[];
}

const r3 = (s: Stat): Stat => rounded(s, 3);
const bin = (): string => path.join(packageRoot, 'bin', 'predump.js');

interface Ran {
  status: number;
  ms: number;
  stdout: string;
  stderr: string;
}

/** Runs `argv` to its end; its wall time from spawn to exit. */
function timed(argv: readonly string[]): Ran {
  const started = performance.now();
  const r = spawnSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
  });
  const ms = performance.now() - started;
  if (r.error) throw new PredumpError('EBENCH', `cannot run ${argv[0]}: ${r.error.message}`);
  return { status: r.status ?? 128, ms, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Runs `argv` to its end under bash's `time`: its wall time and its CPU time (user +
 * system, its threads and children included), to the millisecond (bash's %3R, %3U, %3S). The CPU
 * time hardly moves when other work shares the machine, where the wall time does.
 */
function timedCpu(argv: readonly string[]): { status: number; wallMs: number; cpuMs: number } {
  const r = spawnSync(
    'bash',
    ['-c', 'TIMEFORMAT="%3R %3U %3S"; { time "$@" >/dev/null 2>&1; } 2>&3', 'bash', ...argv],
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], encoding: 'utf8' },
  );
  if (r.error) throw new PredumpError('EBENCH', `cannot run bash: ${r.error.message}`);
  const line = String(r.output[3] ?? '').trim();
  const [real, user, sys] = line.split(/\s+/).map(Number);
  if (![real, user, sys].every((x) => Number.isFinite(x))) {
    throw new PredumpError('EBENCH', `bash's time said '${line}' for ${argv.join(' ')}`);
  }
  return { status: r.status ?? 128, wallMs: real! * 1000, cpuMs: (user! + sys!) * 1000 };
}

/**
 * Runs `argv` to its end under bash's `time`, as timedCpu, keeping its stdout and stderr.
 */
function timedOutput(argv: readonly string[]): Ran & { cpuMs: number } {
  const r = spawnSync(
    'bash',
    ['-c', 'TIMEFORMAT="%3R %3U %3S"; { time "$@" 2>&4; } 2>&3', 'bash', ...argv],
    { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  if (r.error) throw new PredumpError('EBENCH', `cannot run bash: ${r.error.message}`);
  const line = String(r.output[3] ?? '').trim();
  const [real, user, sys] = line.split(/\s+/).map(Number);
  if (![real, user, sys].every((x) => Number.isFinite(x))) {
    throw new PredumpError('EBENCH', `bash's time said '${line}' for ${argv.join(' ')}`);
  }
  return {
    status: r.status ?? 128,
    ms: real! * 1000,
    cpuMs: (user! + sys!) * 1000,
    stdout: String(r.output[1] ?? ''),
    stderr: String(r.output[4] ?? ''),
  };
}

/** What `criu --version` says (its first line), or why it does not run. */
export function criuVersion(criu: string): string {
  const r = spawnSync(criu, ['--version'], { encoding: 'utf8' });
  if (r.error) {
    throw new PredumpError('EUSAGE', `--criu ${criu} does not run: ${r.error.message}`);
  }
  const first = r.stdout.split('\n')[0]?.trim() ?? '';
  if (r.status !== 0 || !/^Version: /.test(first)) {
    throw new PredumpError('EUSAGE', `--criu ${criu} is not CRIU ('--version' said '${first}')`);
  }
  return first.replace(/^Version: /, '');
}

/** A pid no process can have: pid_max itself (pids go up to pid_max - 1). */
async function impossiblePid(): Promise<number> {
  const text = await readFile('/proc/sys/kernel/pid_max', 'utf8').catch(() => '4194304');
  return Number(text.trim());
}

/**
 * The start-up commands, in turns: `node -e 0`; predump up to its first look at the
 * target (a pre-dump of a pid that cannot exist: the command module, the addon and the
 * kernel's answer, then exit 1); predump decoding a small images directory (the codec);
 * predump's --help (yargs, which a well-formed command line does without); and, with
 * CRIU, CRIU's own way to the same refusal.
 */
async function measureStartup(
  plan: StartupPlan,
  imagesDir: string,
  scratch: string,
  events: StartupEvents,
): Promise<StartupRow[]> {
  const node = process.execPath;
  const nobody = String(await impossiblePid());
  const commands: { id: string; what: string; argv: string[]; status: number }[] = [
    { id: 'node', what: 'node -e 0 (the reference)', argv: [node, '-e', '0'], status: 0 },
    {
      id: 'pre-dump-ready',
      what: 'predump pre-dump, to its first look at the target',
      argv: [node, bin(), 'pre-dump', '-t', nobody, '-D', path.join(scratch, 'never')],
      status: 1,
    },
    {
      id: 'show',
      what: 'predump show DIR --json (decodes the images)',
      argv: [node, bin(), 'show', imagesDir, '--json', '--no-entries'],
      status: 0,
    },
    {
      id: 'help',
      what: 'predump pre-dump --help (yargs)',
      argv: [node, bin(), 'pre-dump', '--help'],
      status: 0,
    },
  ];
  if (plan.criu) {
    commands.push({
      id: 'criu-ready',
      what: 'criu pre-dump, to its first look at the target',
      argv: [plan.criu, 'pre-dump', '-t', nobody, '-D', scratch, '-o', 'criu-ready.log'],
      status: 1,
    });
  }
  const times = commands.map(() => [] as number[]);
  const cpu = commands.map(() => [] as number[]);
  // One round not counted: the page cache and Node's code cache warmed for every command.
  for (let round = -1; round < plan.startupRuns; round++) {
    events.step(`start-up round ${round + 1} of ${plan.startupRuns}`);
    for (let k = 0; k < commands.length; k++) {
      // Each round in another order, so that no command always follows the same one.
      const i = (k + Math.max(0, round)) % commands.length;
      const c = commands[i]!;
      const r = timedCpu(c.argv);
      if (r.status !== c.status) {
        const again = timed(c.argv);
        throw new PredumpError(
          'EBENCH',
          `${c.argv.join(' ')}: exit status ${r.status}, expected ${c.status}: ${again.stderr.trim().slice(-400)}`,
        );
      }
      if (round >= 0) {
        times[i]!.push(r.wallMs);
        cpu[i]!.push(r.cpuMs);
      }
    }
  }
  const nodeMs = stat(times[0]!).median;
  const nodeCpuMs = stat(cpu[0]!).median;
  return commands.map((c, i) => {
    const s = stat(times[i]!);
    const u = stat(cpu[i]!);
    return {
      id: c.id,
      what: c.what,
      argv: c.argv.map((a) => (a === node ? 'node' : a === bin() ? 'bin/predump.js' : a)),
      status: c.status,
      wallMs: r3(s),
      cpuMs: r3(u),
      xNode: Math.round((s.median / nodeMs) * 100) / 100,
      cpuXNode: nodeCpuMs > 0 ? Math.round((u.median / nodeCpuMs) * 100) / 100 : null,
    };
  });
}

/** The stopped time and pages of CRIU's images, from its stats-dump. */
async function criuFigures(dir: string): Promise<{ stoppedMs: number; pages: number }> {
  const d = await readPreDumpDir(dir);
  if (!d.stats) throw new PredumpError('EBENCH', `criu wrote no stats-dump in ${dir}`);
  return {
    stoppedMs: (d.stats.freezingTime + d.stats.frozenTime) / 1000,
    pages: d.stats.pagesWritten,
  };
}

interface Samples {
  wall: number[];
  cpu: number[];
  stopped: number[];
  pages: number[];
}

const times = (argv: string[], s: Samples): PreDumpTimes => ({
  argv,
  wallMs: r3(stat(s.wall)),
  cpuMs: r3(stat(s.cpu)),
  stoppedMs: r3(stat(s.stopped)),
  pagesWritten: stat(s.pages),
});

/**
 * Whole read-mode pre-dumps of one workload of `size`, predump's and CRIU's in turns.
 * predump runs with --track-mem none: on a kernel without soft-dirty CRIU tracks nothing
 * either, and both copy every page; each pre-dump goes into a new directory, removed
 * after it.
 */
async function measurePreDumps(
  plan: StartupPlan,
  size: Size,
  scratch: string,
  events: StartupEvents,
): Promise<PreDumpRow> {
  const { Workload } = await import('../workload.js');
  const workload = await Workload.start({ sizeBytes: size.bytes, threads: 1 });
  try {
    const pid = String(workload.pid);
    const predumpArgv = (dir: string): string[] => [
      process.execPath,
      bin(),
      'pre-dump',
      '-t',
      pid,
      '-D',
      dir,
      '--pre-dump-mode',
      'read',
      '--track-mem',
      'none',
      '--json',
    ];
    const criuArgv = (dir: string): string[] => [
      plan.criu!,
      'pre-dump',
      '-t',
      pid,
      '-D',
      dir,
      '--pre-dump-mode',
      'read',
      '-o',
      'criu.log',
    ];
    const ours: Samples = { wall: [], cpu: [], stopped: [], pages: [] };
    const theirs: Samples = { wall: [], cpu: [], stopped: [], pages: [] };
    const tools = plan.criu ? (['predump', 'criu'] as const) : (['predump'] as const);
    // One round not counted (warm-up), then `runs` rounds, the order swapped each round.
    for (let round = -1; round < plan.runs; round++) {
      events.step(`${size.label}: round ${round + 1} of ${plan.runs}`);
      const order = round % 2 === 0 ? tools : [...tools].reverse();
      for (const tool of order) {
        const dir = await mkdtemp(path.join(scratch, `${tool}-`));
        try {
          if (tool === 'predump') {
            const r = timedOutput(predumpArgv(dir));
            if (r.status !== 0) {
              throw new PredumpError(
                'EBENCH',
                `predump pre-dump failed (exit ${r.status}): ${r.stderr.trim().slice(-400)}`,
              );
            }
            const j = JSON.parse(r.stdout) as { stoppedWindowMs: number; pagesWritten: number };
            if (round >= 0) {
              ours.wall.push(r.ms);
              ours.cpu.push(r.cpuMs);
              ours.stopped.push(j.stoppedWindowMs);
              ours.pages.push(j.pagesWritten);
            }
          } else {
            const r = timedOutput(criuArgv(dir));
            if (r.status !== 0) {
              const log = await readFile(path.join(dir, 'criu.log'), 'utf8').catch(() => '');
              throw new PredumpError(
                'EBENCH',
                `criu pre-dump failed (exit ${r.status}): ${(log || r.stderr).trim().slice(-600)}`,
              );
            }
            const f = await criuFigures(dir);
            if (round >= 0) {
              theirs.wall.push(r.ms);
              theirs.cpu.push(r.cpuMs);
              theirs.stopped.push(f.stoppedMs);
              theirs.pages.push(f.pages);
            }
          }
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }
    }
    const self = await workload.selfCheck();
    if (!self.ok) {
      throw new PredumpError(
        'EBENCH',
        `the ${size.label} workload failed its own check after the pre-dumps`,
      );
    }
    const anon = (argv: string[]): string[] =>
      argv.map((a) =>
        a === process.execPath
          ? 'node'
          : a === bin()
            ? 'bin/predump.js'
            : a === pid
              ? 'PID'
              : a === scratch
                ? 'DIR'
                : a,
      );
    const predump = times(anon(predumpArgv('DIR')), ours);
    const criu = plan.criu ? times(anon(criuArgv('DIR')), theirs) : null;
    return {
      sizeBytes: size.bytes,
      label: size.label,
      runs: plan.runs,
      predump,
      criu,
      wallRatio: criu
        ? Math.round((predump.wallMs.median / criu.wallMs.median) * 1000) / 1000
        : null,
      cpuRatio:
        criu && criu.cpuMs.median > 0
          ? Math.round((predump.cpuMs.median / criu.cpuMs.median) * 1000) / 1000
          : null,
    };
  } finally {
    await workload.stop();
  }
}

function judge(rows: StartupRow[], preDumps: PreDumpRow[], criu: string | null): StartupGoal[] {
  const node = rows.find((r) => r.id === 'node')!;
  const ready = rows.find((r) => r.id === 'pre-dump-ready')!;
  const over = Math.round((ready.wallMs.median - node.wallMs.median) * 10) / 10;
  const overCpu = Math.round((ready.cpuMs.median - node.cpuMs.median) * 10) / 10;
  const goals: StartupGoal[] = [
    {
      id: 'cli-ready',
      goal: `predump pre-dump ready to work within ${READY_GOAL_MS} ms of node -e 0`,
      measured: over,
      target: READY_GOAL_MS,
      unit: 'ms',
      met: over <= READY_GOAL_MS,
      detail:
        `${ready.wallMs.median.toFixed(1)} ms against node -e 0's ` +
        `${node.wallMs.median.toFixed(1)} ms (medians): ${over.toFixed(1)} ms more; CPU time ` +
        `${ready.cpuMs.median.toFixed(1)} ms against ${node.cpuMs.median.toFixed(1)} ms: ` +
        `${overCpu.toFixed(1)} ms more`,
    },
  ];
  for (const label of ['256M', '1G']) {
    const row = preDumps.find((p) => p.label === label);
    const id = `whole-pre-dump-${label}`;
    const goal = `a whole predump pre-dump (read mode) no slower than criu pre-dump at ${label}`;
    if (!row || !row.criu || row.wallRatio === null) {
      goals.push({
        id,
        goal,
        measured: null,
        target: 1,
        unit: '×',
        met: null,
        detail: !criu
          ? 'not measured: no --criu given'
          : `not measured: ${label} is not among --sizes`,
      });
      continue;
    }
    goals.push({
      id,
      goal,
      measured: row.wallRatio,
      target: 1,
      unit: '×',
      met: row.wallRatio <= 1,
      detail:
        `${row.predump.wallMs.median.toFixed(0)} ms against CRIU's ` +
        `${row.criu.wallMs.median.toFixed(0)} ms (medians of ${row.runs}); stopped ` +
        `${row.predump.stoppedMs.median.toFixed(2)} ms against ${row.criu.stoppedMs.median.toFixed(2)} ms`,
    });
  }
  return goals;
}

/** The whole benchmark; `command` is the command line it is reported with. */
export async function runStartupBench(
  plan: StartupPlan,
  events: StartupEvents,
  command: string,
): Promise<StartupReport> {
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const loadAvgStart = os.loadavg().map((x) => Math.round(x * 100) / 100);
  const criu = plan.criu ? criuVersion(plan.criu) : null;
  const notes: string[] = [];
  if (!plan.criu) notes.push('CRIU not measured: give --criu PATH (CRIU 4.2 or later)');
  if (process.env['NODE_EXTRA_CA_CERTS']) {
    // Node reads and parses those certificates as it starts, before any script: every
    // Node command measured here pays for it, node -e 0 included, CRIU does not.
    notes.push(
      'NODE_EXTRA_CA_CERTS is set: every Node start-up parses its certificates before running ' +
        'any script (node -e 0 included); unset it to measure Node as most machines start it',
    );
  }
  const scratch = await mkdtemp(path.join(plan.dir, 'predump-bench-startup-'));
  try {
    // The images `show` decodes: a small pre-dump of a small workload.
    const { Workload } = await import('../workload.js');
    const small = await Workload.start({ sizeBytes: 4 << 20, threads: 0 });
    const shown = path.join(scratch, 'shown');
    try {
      const r = timed([
        process.execPath,
        bin(),
        'pre-dump',
        '-t',
        String(small.pid),
        '-D',
        shown,
        '--track-mem',
        'none',
      ]);
      if (r.status !== 0) {
        throw new PredumpError('EBENCH', `the pre-dump for 'show' failed: ${r.stderr.trim()}`);
      }
    } finally {
      await small.stop();
    }
    const rows = await measureStartup(plan, shown, scratch, events);
    const preDumps: PreDumpRow[] = [];
    for (const size of plan.sizes)
      preDumps.push(await measurePreDumps(plan, size, scratch, events));
    const check = spawnSync('uname', ['-r'], { encoding: 'utf8' });
    return {
      version: STARTUP_REPORT_VERSION,
      ok: true,
      command,
      machine: {
        cpus: os.cpus().length,
        kernel: check.stdout.trim(),
        node: process.version,
        criu,
        imagesDir: path.resolve(plan.dir),
        loadAvgStart,
        loadAvgEnd: os.loadavg().map((x) => Math.round(x * 100) / 100),
        startedAt,
        durationS: Math.round((performance.now() - started) / 100) / 10,
      },
      startup: { runs: plan.startupRuns, rows },
      preDump: preDumps,
      goals: judge(rows, preDumps, plan.criu),
      notes,
    };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The report as a table for a person. */
export function renderStartupTable(r: StartupReport): string {
  const ms = (s: Stat): string =>
    `${s.median.toFixed(1)} [${s.min.toFixed(1)}–${s.max.toFixed(1)}]`;
  const lines = [
    `Start-up: whole processes, wall and CPU time in ms, median [min–max] of ${r.startup.runs} rounds`,
    '',
    `  ${''.padEnd(52)} ${'wall'.padEnd(32)} cpu`,
    ...r.startup.rows.map(
      (row) =>
        `  ${row.what.padEnd(52)} ${`${ms(row.wallMs)} ${row.xNode.toFixed(2)}×`.padEnd(32)} ` +
        `${ms(row.cpuMs)}${row.cpuXNode === null ? '' : ` ${row.cpuXNode.toFixed(2)}×`}`,
    ),
    '',
  ];
  if (r.preDump.length > 0) {
    lines.push(
      'Whole read-mode pre-dumps, in turns: wall, CPU and stopped time in ms, median [min–max]',
      '',
      `  ${'size'.padEnd(6)} ${'tool'.padEnd(8)} ${'wall'.padEnd(26)} ${'cpu'.padEnd(26)} ` +
        `${'stopped'.padEnd(24)} pages`,
    );
    for (const p of r.preDump) {
      for (const [tool, t] of [
        ['predump', p.predump],
        ['criu', p.criu],
      ] as const) {
        if (!t) continue;
        lines.push(
          `  ${p.label.padEnd(6)} ${tool.padEnd(8)} ${ms(t.wallMs).padEnd(26)} ` +
            `${ms(t.cpuMs).padEnd(26)} ${ms(t.stoppedMs).padEnd(24)} ${t.pagesWritten.median}`,
        );
      }
      if (p.wallRatio !== null) {
        lines.push(
          `  ${''.padEnd(6)} predump ÷ criu: wall ${p.wallRatio.toFixed(2)}×` +
            (p.cpuRatio === null ? '' : `, CPU ${p.cpuRatio.toFixed(2)}×`),
        );
      }
    }
    lines.push('');
  }
  lines.push('Goals:');
  for (const g of r.goals) {
    const verdict = g.met === null ? 'not measured' : g.met ? 'met' : 'MISSED';
    lines.push(`  ${verdict.padEnd(12)} ${g.goal}: ${g.detail}`);
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n') + '\n';
}
