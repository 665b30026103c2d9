/**
 * `predump bench`: a quick run's JSON has the documented shape and every figure is a
 * real measurement; its chart renders in a browser; bad command lines are refused with
 * exit 2 before anything starts; an interrupted run stops its workloads and removes its
 * images.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { inflateSync } from 'node:zlib';

import { renderChart, MODE_COLORS, formatTime } from '../ts/bench/chart.js';
import {
  parseDirtyRates,
  parseSizes,
  sizeLabel,
  stepsOf,
  type BenchPlan,
} from '../ts/bench/plan.js';
import { pagesWithin } from '../ts/bench/run.js';
import { stat as statOf } from '../ts/bench/stats.js';
import type { BenchReport, BenchRow } from '../ts/bench/report.js';
import { renderPageServerTable, type PageServerReport } from '../ts/bench/page-server.js';
import { renderStartupTable, type StartupReport } from '../ts/bench/startup.js';
import { renderTreeTable, type TreeReport } from '../ts/bench/tree.js';
import { PE_PARENT, PE_PRESENT } from '../ts/images/index.js';
import {
  assertCliError,
  execFileP,
  MiB,
  mountTmpfs,
  parseJson,
  runCli,
  startCli,
  tempDir,
  type CliResult,
} from './helpers.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));

/** A fresh directory for images on tmpfs (as the bench's default), removed at the end. */
async function shmDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp('/dev/shm/predump-bench-test-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const STAT_FIELDS = [
  'frozenMs',
  'totalMs',
  'drainMs',
  'xMemcpy',
  'throughputMBps',
  'pagesWritten',
  'peakRssBytes',
  'pinnedBytes',
  'workloadSpeed',
] as const;

type Stat = { median: number; min: number; max: number };

function assertStat(t: ExecutionContext, s: unknown, what: string): Stat {
  t.truthy(s, `${what} is present`);
  const st = s as Stat;
  t.deepEqual(Object.keys(st).sort(), ['max', 'median', 'min'], what);
  for (const k of ['median', 'min', 'max'] as const) {
    t.true(Number.isFinite(st[k]), `${what}.${k} = ${st[k]} is a finite number`);
  }
  t.true(st.min <= st.median && st.median <= st.max, `${what}: min ≤ median ≤ max`);
  return st;
}

/** A real measurement: finite and above zero (a zero here would be a placeholder). */
function assertMeasured(t: ExecutionContext, s: unknown, what: string): void {
  const st = assertStat(t, s, what);
  t.true(st.min > 0, `${what}.min = ${st.min} > 0`);
}

// ---- the quick run --------------------------------------------------------------------------

/** The chart of the quick run, for the rendering test that follows it. */
let quickChart: { svg: string; colors: string[] } | undefined;

test.serial('bench --quick --json: the shape, real figures, and an SVG chart', async (t) => {
  const dir = await shmDir(t);
  const chart = path.join(await tempDir(t), 'bench.svg');
  const started = performance.now();
  const r = await runCli(['bench', '--quick', '--json', '--dir', dir, '--chart', chart]);
  const seconds = (performance.now() - started) / 1000;
  t.is(r.code, 0, r.stderr);
  t.log(`bench --quick took ${seconds.toFixed(1)} s`);
  t.true(seconds < 60, `--quick takes well under a minute (${seconds.toFixed(1)} s)`);
  // With --json, stderr carries only warnings and errors: no estimate, no progress.
  t.notRegex(r.stderr, /estimated|done in/);
  t.deepEqual(await readdir(dir), [], 'no images left behind');
  const j = parseJson<BenchReport>(t, r);
  t.is(j.ok, true);

  // The plan of --quick: 64 MiB, 1 thread, 10% dirtied, churn off, 3 runs, 2 iterations.
  t.deepEqual(j.plan.sizes, [64 * MiB]);
  t.deepEqual(j.plan.threads, [1]);
  t.deepEqual(j.plan.dirtyRates, [0.1]);
  t.deepEqual(j.plan.churn, [false]);
  t.is(j.plan.runs, 3);
  t.is(j.plan.iterations, 2);

  // The modes: read and splice always; freeze-free measured, or skipped with a reason.
  const modes = new Set(j.runs.map((row) => row.mode));
  t.true(modes.has('read') && modes.has('splice'), [...modes].join(','));
  if (!modes.has('freeze-free')) {
    const why = [...j.notes, ...j.skipped.map((s) => `${s.what}: ${s.reason}`)].join('\n');
    t.regex(why, /freeze-free/, 'a mode not run is explained');
  }

  // Per mode: a lone pre-dump (not freeze-free), a tracked first one, and two incremental ones.
  const kinds = (mode: string): string[] =>
    j.runs
      .filter((row) => row.mode === mode)
      .map(
        (row) =>
          `${row.trackMem === 'none' ? 'lone' : row.trackMem}/${row.dirtyRate}/${row.iteration}`,
      );
  for (const mode of ['read', 'splice']) {
    t.deepEqual(
      kinds(mode),
      ['lone/null/0', 'uffd-wp/null/0', 'uffd-wp/0.1/1', 'uffd-wp/0.1/2'],
      mode,
    );
  }
  if (modes.has('freeze-free')) {
    t.deepEqual(kinds('freeze-free'), ['uffd-wp/null/0', 'uffd-wp/0.1/1', 'uffd-wp/0.1/2']);
  }

  for (const row of j.runs) {
    const what = `${row.mode} ${row.trackMem} ${row.dirtyRate} #${row.iteration}`;
    t.is(row.sizeBytes, 64 * MiB, what);
    t.is(row.threads, 1, what);
    t.is(row.churn, false, what);
    t.is(row.samples, 3, `${what}: one sample per run`);
    for (const f of STAT_FIELDS) {
      const v = row[f];
      // By design, not placeholders: read mode pins nothing, and freeze-free's incremental
      // pre-dumps stop nothing. Both are checked to be exactly that.
      if (f === 'pinnedBytes' && row.mode !== 'splice') {
        assertStat(t, v, `${what} ${f}`);
        if (row.mode === 'read') t.is(row.pinnedBytes.max, 0, `${what}: read mode pins nothing`);
      } else if (f === 'frozenMs' && row.mode === 'freeze-free' && row.iteration > 0) {
        t.is(assertStat(t, v, `${what} ${f}`).max, 0, `${what}: not stopped`);
      } else {
        assertMeasured(t, v, `${what} ${f}`);
      }
    }
    t.true(row.peakRssBytes.median > 20 * MiB && row.peakRssBytes.median < 1024 * MiB, what);
    if (row.iteration === 0) {
      t.is(row.dirtyRate, null, what);
      t.is(row.pagesDirtied, null, what);
      t.is(row.dataPagesWritten, null, what);
      // A first pre-dump copies at least the workload's data.
      t.true(row.pagesWritten.min >= (64 * MiB) / 4096, what);
    } else {
      assertMeasured(t, row.pagesDirtied, `${what} pagesDirtied`);
      assertMeasured(t, row.dataPagesWritten, `${what} dataPagesWritten`);
      // 10% of 16384 data pages.
      t.is(row.pagesDirtied!.median, 1638, what);
      t.true(row.pagesWritten.median >= row.dataPagesWritten!.median, what);
    }
  }

  // The references of the same run, per size.
  const k = String(64 * MiB);
  for (const f of ['memcpyMs', 'memcpyFreshMs', 'pvrMs', 'writeMs'] as const) {
    assertMeasured(t, j.reference[f][k], `reference.${f}`);
  }
  t.true(j.reference.bytes[k]! >= 64 * MiB);

  // The machine and the goals.
  t.true(j.machine.cpus > 0);
  t.regex(j.machine.kernel, /^\d+\.\d+/);
  t.is(j.machine.imagesFs, 'tmpfs');
  t.true(j.machine.memTotalBytes > 0 && j.machine.durationS > 0);
  t.deepEqual(
    j.goals.map((g) => g.id),
    ['read-frozen-1g', 'total-vs-memcpy', 'incremental-precision', 'splice-frozen-1g'],
  );
  for (const g of j.goals) {
    if (g.met === null) {
      t.is(g.measured, null);
      t.regex(g.detail, /^not measured/);
    } else {
      t.true(Number.isFinite(g.measured), g.id);
    }
  }
  // At 64 MiB the goals at 1 GiB are not measured; the others are.
  t.is(j.goals.find((g) => g.id === 'read-frozen-1g')!.met, null);
  t.not(j.goals.find((g) => g.id === 'total-vs-memcpy')!.met, null);
  t.not(j.goals.find((g) => g.id === 'incremental-precision')!.met, null);

  // The chart: an SVG with a bar per mode, which a browser renders.
  const svg = await readFile(chart, 'utf8');
  t.regex(svg, /^<\?xml[^>]*>\s*<svg /);
  for (const mode of modes) t.true(svg.includes(MODE_COLORS[mode]), `a bar of ${mode}`);
  quickChart = { svg, colors: [...modes].map((m) => MODE_COLORS[m]) };
});

// Skipped, and said so by ava, where Chromium is missing (.ci/run installs it).
(CHROMIUM ? test.serial : test.serial.skip)(
  'the chart of bench --quick renders in a browser (headless Chromium)',
  async (t) => {
    if (!quickChart) return t.fail('the quick bench run before this test made no chart');
    const file = path.join(await tempDir(t), 'bench.svg');
    await writeFile(file, quickChart.svg);
    await assertRenders(t, file, quickChart.svg, quickChart.colors);
  },
);

test.serial(
  'bench without --json: a table on stdout, progress and the estimate on stderr',
  async (t) => {
    const dir = await shmDir(t);
    const r = await runCli([
      'bench',
      '--quick',
      '--runs',
      '1',
      '--modes',
      'read',
      '--iterations',
      '1',
      '--dir',
      dir,
    ]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /^predump bench: \d+ CPUs/);
    t.regex(r.stdout, /== 64\.0 MiB, 1 compute thread, churn off/);
    t.regex(r.stdout, /^lone +read /m);
    t.regex(r.stdout, /^\+10% #1 +read /m);
    t.regex(r.stdout, /== references/);
    t.regex(r.stdout, /== goals/);
    t.regex(r.stdout, /not run +read mode: target stopped ≤ 5 ms at 1 GiB/);
    t.regex(r.stderr, /estimated/);
    t.regex(r.stderr, /done in/);
    t.notRegex(r.stdout, /NaN|undefined/);
    t.deepEqual(await readdir(dir), []);
  },
);

test.serial('bench interrupted: exit 130, its workload stopped, its images removed', async (t) => {
  const dir = await shmDir(t);
  const cli = startCli(['bench', '--quick', '--runs', '200', '--dir', dir, '--json']);
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  // Wait until it is pre-dumping: a chain directory exists under its images directory.
  let busy = false;
  for (let i = 0; i < 600 && !busy; i++) {
    for (const top of await readdir(dir)) {
      busy ||= (await readdir(path.join(dir, top)).catch(() => [])).length > 0;
    }
    if (!busy) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.true(busy, 'the bench started pre-dumping');
  cli.child.kill('SIGINT');
  const r: CliResult = await cli.done;
  t.is(r.code, 130, r.stderr);
  t.regex(r.stderr, /SIGINT: stopping after the current step/);
  t.regex(r.stderr, /interrupted: its workloads were stopped and its images removed/);
  const j = parseJson<{ ok: boolean; error: { code: string } }>(t, r);
  t.is(j.ok, false);
  t.is(j.error.code, 'EINTERRUPTED');
  t.deepEqual(await readdir(dir), [], 'no images left behind');
});

// ---- start-up ------------------------------------------------------------------------------

test.serial(
  'bench --startup --json: start-up beside node -e 0, whole pre-dumps, goals',
  async (t) => {
    const dir = await shmDir(t);
    const r = await runCli([
      'bench',
      '--startup',
      '--sizes',
      '16M',
      '--runs',
      '1',
      '--json',
      '--dir',
      dir,
    ]);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(await readdir(dir), [], 'no images left behind');
    // With --json, stderr is for warnings and errors: at most the busy-machine note here.
    t.notRegex(r.stderr, /Start-up|Goals/);
    const j = parseJson<StartupReport>(t, r);
    t.is(j.version, 1);
    t.is(j.ok, true);
    t.is(j.machine.criu, null);
    t.deepEqual(
      j.startup.rows.map((row) => row.id),
      ['node', 'pre-dump-ready', 'show', 'help'],
    );
    for (const row of j.startup.rows) {
      assertMeasured(t, row.wallMs, row.id);
      assertMeasured(t, row.cpuMs, `${row.id} cpu`);
      t.true(row.xNode > 0, row.id);
    }
    t.is(j.startup.rows[0]!.xNode, 1);
    t.is(j.preDump.length, 1);
    const p = j.preDump[0]!;
    t.is(p.label, '16M');
    t.is(p.criu, null);
    t.is(p.wallRatio, null);
    t.is(p.cpuRatio, null);
    assertMeasured(t, p.predump.wallMs, 'predump wall');
    // CPU time: Node's start at the least, and the copy of 16 MiB.
    assertMeasured(t, p.predump.cpuMs, 'predump cpu');
    t.true(p.predump.cpuMs.min >= j.startup.rows[0]!.cpuMs.min / 2, 'Node started, at the least');
    assertMeasured(t, p.predump.stoppedMs, 'predump stopped');
    t.true(p.predump.pagesWritten.min >= (16 * MiB) / 4096, 'every page of the workload copied');
    t.deepEqual(
      j.goals.map((g) => [g.id, g.met === null]),
      [
        ['cli-ready', false],
        ['whole-pre-dump-256M', true],
        ['whole-pre-dump-1G', true],
      ],
    );
    t.regex(j.goals[1]!.detail, /not measured: no --criu given/);
    t.true(j.notes.some((n) => /CRIU not measured: give --criu PATH/.test(n)));
    // The table: the same run, for a person.
    t.regex(renderStartupTable(j), /node -e 0 \(the reference\)\s+\d/);
    t.regex(renderStartupTable(j), /\n {2}16M {4}predump {2}[\d.]+ \[[\d.–]+\] +[\d.]+ \[/);
  },
);

// ---- page server -----------------------------------------------------------------------------

test.serial(
  'bench --page-server --json: pre-dumps to a page server beside TCP and a local pre-dump, goals',
  async (t) => {
    const dir = await shmDir(t);
    const r = await runCli([
      'bench',
      '--page-server',
      '--sizes',
      '8M,16M',
      '--modes',
      'read',
      '--runs',
      '1',
      '--json',
      '--dir',
      dir,
    ]);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(await readdir(dir), [], 'no images left behind');
    t.notRegex(r.stderr, /Goals/);
    const j = parseJson<PageServerReport>(t, r);
    t.is(j.version, 1);
    t.deepEqual(
      j.rows.map((row) => [row.label, row.mode]),
      [
        ['8M', 'read'],
        ['16M', 'read'],
      ],
    );
    for (const row of j.rows) {
      // Every page of the workload went through the socket, as many bytes through TCP.
      t.true(row.bytesSent.min >= row.sizeBytes, row.label);
      for (const s of [row.sessionMs, row.tcpMs, row.stoppedMs, row.localStoppedMs, row.wallMs]) {
        assertMeasured(t, s, row.label);
      }
      t.true(row.sendMBps.median > 0 && row.tcpMBps.median > 0 && row.writeMBps.median > 0);
      // The local pre-dump's rate: its bytes over its own total, below the command's wall time.
      t.true(row.localMBps.median > 0, String(row.localMBps.median));
      t.true(
        row.localMBps.min >= (row.sizeBytes / 1e6 / row.localWallMs.max) * 1000,
        `${row.localMBps.min} MB/s in a command of ${row.localWallMs.max} ms`,
      );
      // xTcp is the ratio of the unrounded medians (the rates are reported to 0.1 MB/s).
      const ratio = row.sendMBps.median / row.tcpMBps.median;
      t.true(Math.abs(row.xTcp - ratio) <= 0.001 + 0.01 * ratio, `${row.xTcp} vs ${ratio}`);
      // A Node process: tens of MiB, not the pages it received.
      t.true(row.serverPeakRssBytes.min > 10 * MiB, String(row.serverPeakRssBytes.min));
    }
    t.deepEqual(
      j.goals.map((g) => g.id),
      [
        'throughput-8M-read',
        'stopped-8M-read',
        'throughput-16M-read',
        'stopped-16M-read',
        'server-memory-read',
      ],
    );
    t.regex(renderPageServerTable(j), /8M\s+read\s+\d/);
    t.regex(renderPageServerTable(j), /local MB\/s/);
    t.regex(
      j.goals[0]!.detail,
      /a local pre-dump of the same process, no network: \d+ MB\/s, [\d.]+×/,
    );
  },
);

// ---- trees -----------------------------------------------------------------------------------

test.serial(
  'bench --tree --json: a tree sharing memory beside one process of the same size, goals',
  async (t) => {
    const dir = await shmDir(t);
    const r = await runCli([
      'bench',
      '--tree',
      '--processes',
      '4',
      '--sizes',
      '16M',
      '--runs',
      '1',
      '--json',
      '--dir',
      dir,
    ]);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(await readdir(dir), [], 'no images left behind');
    const j = parseJson<TreeReport>(t, r);
    t.is(j.version, 2);
    t.is(j.rows.length, 1);
    const row = j.rows[0]!;
    t.is(row.processes, 4);
    t.is(row.sharedBytes, 4 * MiB);
    // The shared object once, every page of it: not once per process.
    t.is(row.sharedPages, 1024);
    t.is(row.sharedPagesWritten, 1024);
    for (const s of [
      row.stoppedMs,
      row.scanMs,
      row.totalMs,
      row.spliceStoppedMs,
      row.spliceInjectMs,
      row.spliceTotalMs,
      row.singleStoppedMs,
      row.memcpyMs,
    ]) {
      assertMeasured(t, s, 'tree');
    }
    // The splice runs held the tree's private pages in pipes (the shared object is read).
    t.true(row.splicePipes.min >= row.processes, `${row.splicePipes.min} pipes`);
    t.true(row.splicePinnedBytes.min >= 10 * MiB, 'the private data pinned');
    t.regex(j.goals[0]!.detail, /the tree in splice mode, same rounds: [\d.]+ ms/);
    t.true(row.pagesWritten.min >= (16 * MiB) / 4096, 'the private and shared data');
    // The tracked chain (where this kernel has uffd-wp): no written page lost, the rest of
    // each process's pages left to the parent, of the shared object only the pages dirtied
    // (compared with the chain's copy: each one dirtied differs from it).
    const inc = row.incremental;
    t.deepEqual(
      j.goals.map((g) => [g.id, g.met === null]),
      [
        ['tree-stopped-16M', false],
        ['tree-shared-once-16M', false],
        ['tree-freeze-free-16M', inc === null],
        ['tree-incremental-16M', inc === null],
      ],
    );
    t.true(j.goals[1]!.met === true);
    // The freeze-free chain (where the tracked one was measured): no process stopped after
    // the first, which stopped them to make their tracking; read-mode runs in turns stopped.
    const ff = row.freezeFree;
    t.is(ff === null || ff === undefined, inc === null);
    if (ff) {
      t.is(ff.stoppedMs.max, 0, 'freeze-free: never stopped after the first');
      t.true(ff.firstStoppedMs > 0, 'the first made every tracking');
      t.true(ff.readStoppedMs.min > 0, 'the read-mode runs of the chain froze the tree');
      t.true(ff.privateWritten.min >= ff.privateDirtied.min, 'every written page copied');
      t.is(j.goals[2]!.met, true);
      t.regex(j.goals[2]!.detail, /^0\.0 ms at most in 1 runs/);
    }
    if (inc === null) {
      t.log(`the tracked chain was not measured: ${row.untracked}`);
    } else {
      t.true(inc.privateDirtied.min > 0);
      t.true(inc.privateWritten.min >= inc.privateDirtied.min, 'every written page copied');
      t.true(
        inc.privateWritten.max <= inc.privateDirtied.max + 100 * row.processes,
        `private pages written ${inc.privateWritten.max} for ${inc.privateDirtied.max} dirtied`,
      );
      // The pages changed (compared with the chain's copy, outside the tracking): every
      // page the bench dirtied changed (each write stores a new epoch), none beyond those
      // written is counted.
      t.true(
        inc.privateChanged.min >= inc.privateDirtied.min,
        `${inc.privateChanged.min} pages changed for ${inc.privateDirtied.min} dirtied by the bench`,
      );
      t.true(inc.privateChanged.max <= inc.privateWritten.max, 'changed pages are written ones');
      t.true(inc.sharedWritten.min >= inc.sharedDirtied.min, 'every dirtied shared page copied');
      t.true(
        inc.sharedWritten.max <= inc.sharedDirtied.max,
        `shared pages written ${inc.sharedWritten.max} for ${inc.sharedDirtied.max} dirtied`,
      );
      t.true(inc.sharedSkippedParent.min > 0, 'shared pages left to the parent');
      t.true(inc.skippedParent.min > 0, 'pages left to the parent');
      t.regex(j.goals[3]!.detail, /pages written for \d+ dirtied/);
    }
    t.regex(renderTreeTable(j), /16M\s+4\s+\d/);
  },
);

// ---- bad command lines: exit 2 before anything starts ----------------------------------------

const usageCases: [string, string[], RegExp][] = [
  ['a bad size', ['--sizes', '256M,12X'], /--sizes must be a size such as 256M or 1G, got '12X'/],
  ['no size', ['--sizes', ','], /--sizes needs at least one value/],
  [
    'an unknown mode',
    ['--modes', 'read,fast'],
    /--modes: unknown mode 'fast': choose from read, splice, freeze-free/,
  ],
  [
    '--iterations 0',
    ['--iterations', '0'],
    /--iterations must be an integer from 1 to 100, got '0'/,
  ],
  [
    '--iterations abc',
    ['--iterations', 'abc'],
    /--iterations must be an integer from 1 to 100, got 'abc'/,
  ],
  ['--runs 0', ['--runs', '0'], /--runs must be an integer from 1 to 1000, got '0'/],
  ['--threads 0', ['--threads', '1,0'], /--threads must be an integer from 1 to 256, got '0'/],
  [
    'a dirty rate over 100%',
    ['--dirty-rates', '0,150'],
    /--dirty-rates must be percentages from 0 to 100/,
  ],
  ['a dirty rate finer than 0.1%', ['--dirty-rates', '0.05'], /at most one decimal .*got '0.05'/],
  ['a bad churn', ['--churn', 'maybe'], /--churn takes off, on or off,on; got 'maybe'/],
  ['--criu without --startup', ['--criu', '/bin/true'], /--criu is an option of --startup/],
  [
    '--startup with an option of the mode benchmark',
    ['--startup', '--modes', 'read'],
    /--modes is an option of the mode benchmark, not of --startup/,
  ],
  [
    '--startup --dirty-rates',
    ['--startup', '--dirty-rates', '1'],
    /--dirty-rates is an option of the mode benchmark, not of --startup/,
  ],
  ['--startup --runs 0', ['--startup', '--runs', '0'], /--runs must be an integer from 1 to 1000/],
  [
    '--startup and --page-server',
    ['--startup', '--page-server'],
    /--startup, --page-server and --tree are separate benchmarks: give one/,
  ],
  ['--tree and --page-server', ['--tree', '--page-server'], /are separate benchmarks: give one/],
  ['--processes without --tree', ['--processes', '10'], /--processes is an option of --tree/],
  [
    '--tree --processes 1',
    ['--tree', '--processes', '1'],
    /--processes must be an integer from 2 to 1000/,
  ],
  [
    '--tree --shared-percent 95',
    ['--tree', '--shared-percent', '95'],
    /--shared-percent must be an integer from 0 to 90/,
  ],
  ['--tree --modes', ['--tree', '--modes', 'splice'], /--modes is not an option of --tree/],
  [
    '--page-server with an option it does not take',
    ['--page-server', '--threads', '2'],
    /--threads is not an option of --page-server/,
  ],
  [
    '--page-server in freeze-free mode',
    ['--page-server', '--modes', 'read,freeze-free'],
    /--modes: 'freeze-free' is not a page-server mode here \(read, splice\)/,
  ],
  [
    '--page-server --runs 0',
    ['--page-server', '--runs', '0'],
    /--runs must be an integer from 1 to 1000/,
  ],
  [
    '--startup with a criu that does not exist',
    ['--startup', '--criu', '/nonexistent/criu'],
    /--criu \/nonexistent\/criu does not run: .*ENOENT/,
  ],
  [
    '--startup with a criu that is not CRIU',
    ['--startup', '--criu', '/bin/true'],
    /--criu \/bin\/true is not CRIU \('--version' said '/,
  ],
];

// One after the other: twenty CLI processes at once would only slow the other test files down.
test('bench with a bad option value: exit 2, EUSAGE, a message naming it', async (t) => {
  for (const [what, args, message] of usageCases) {
    const r = await runCli(['bench', ...args, '--json']);
    assertCliError(t, r, { exit: 2, code: 'EUSAGE', message });
    // Without --json: the same message on stderr, nothing on stdout.
    const plain = await runCli(['bench', ...args]);
    t.is(plain.code, 2, what);
    t.is(plain.stdout, '', what);
    t.regex(plain.stderr, message, what);
  }
});

test('bench --dir that is not a usable directory: exit 2, EUSAGE', async (t) => {
  const tmp = await tempDir(t);
  const file = path.join(tmp, 'a-file');
  await writeFile(file, 'x');
  let r = await runCli(['bench', '--quick', '--dir', file, '--json']);
  assertCliError(t, r, { exit: 2, code: 'EUSAGE', message: /--dir .*a-file is not a directory/ });
  r = await runCli(['bench', '--quick', '--dir', path.join(tmp, 'missing'), '--json']);
  assertCliError(t, r, { exit: 2, code: 'EUSAGE', message: /--dir .*missing does not exist/ });
  const ro = path.join(tmp, 'ro');
  await mkdir(ro);
  await mountTmpfs(t, ro, 'ro,size=1M');
  r = await runCli(['bench', '--quick', '--dir', ro, '--json']);
  assertCliError(t, r, {
    exit: 2,
    code: 'EUSAGE',
    message: /--dir .*ro is not writable: .*read-only/,
  });
});

test('bench --chart that cannot be written: exit 2 before measuring, nothing left', async (t) => {
  const tmp = await tempDir(t);
  const ro = path.join(tmp, 'ro');
  await mkdir(ro);
  await mountTmpfs(t, ro, 'ro,size=1M');
  const cases: [string, RegExp][] = [
    [path.join(ro, 'bench.svg'), /--chart .*bench\.svg cannot be written: .*read-only file system/],
    [
      path.join(tmp, 'no-such-dir', 'bench.svg'),
      /--chart .*bench\.svg cannot be written: .*no such file/i,
    ],
    [tmp, /--chart .* is a directory: give a file such as bench\.svg/],
  ];
  for (const [chart, message] of cases) {
    const started = performance.now();
    const r = await runCli(['bench', '--quick', '--chart', chart, '--json']);
    assertCliError(t, r, { exit: 2, code: 'EUSAGE', message });
    t.true(performance.now() - started < 30_000, 'refused at once, not after measuring');
    t.notRegex(r.stderr, /estimated/, 'nothing was started');
  }
  t.deepEqual((await readdir(tmp)).sort(), ['ro']);
  t.deepEqual(await readdir(ro), []);
});

test('bench --chart into an existing file that can be written is accepted (checked without harm)', async (t) => {
  // The check opens an existing file without truncating it; a bad --sizes then fails the run.
  const file = path.join(await tempDir(t), 'old.svg');
  await writeFile(file, 'keep me');
  const r = await runCli(['bench', '--chart', file, '--sizes', 'x', '--json']);
  assertCliError(t, r, { exit: 2, code: 'EUSAGE', message: /--sizes must be a size/ });
  t.is(await readFile(file, 'utf8'), 'keep me');
});

// ---- the pieces -----------------------------------------------------------------------------

test('plan parsing: sizes, dirty rates, the steps of a mode', (t) => {
  t.deepEqual(
    parseSizes('1G,256M,1g,4096').map((s) => s.label),
    ['4K', '256M', '1G'],
  );
  t.is(sizeLabel(3 * 2 ** 29), '1536M');
  t.deepEqual(parseDirtyRates('10,0,1%,0.5'), [0, 0.005, 0.01, 0.1]);
  const plan = { dirtyRates: [0, 0.1], iterations: 2 } as BenchPlan;
  const kinds = (mode: 'read' | 'freeze-free', trackMem: string): string[] =>
    stepsOf(plan, mode, { trackMem }).map((s) => `${s.kind}/${s.dirtyRate}/${s.iteration}`);
  t.deepEqual(kinds('read', 'uffd-wp'), [
    'lone/null/0',
    'first/null/0',
    'incremental/0/1',
    'incremental/0/2',
    'incremental/0.1/1',
    'incremental/0.1/2',
  ]);
  t.deepEqual(kinds('freeze-free', 'uffd-wp').slice(0, 1), ['first/null/0']);
  t.deepEqual(kinds('read', 'none'), ['lone/null/0']);
});

test('stats, data pages of a pagemap, chart labels', (t) => {
  t.deepEqual(statOf([3, 1, 2]), { median: 2, min: 1, max: 3 });
  t.deepEqual(statOf([4, 1, 2, 3]), { median: 2.5, min: 1, max: 4 });
  const P = 4096;
  const entries = [
    { vaddr: 0, nrPages: 4, flags: PE_PRESENT }, // 2 pages inside [2P, 10P)
    { vaddr: 4 * P, nrPages: 2, flags: PE_PARENT }, // left to the parent: not written
    { vaddr: 8 * P, nrPages: 4, flags: PE_PRESENT }, // 2 pages inside
  ];
  t.is(pagesWithin(entries, 2 * P, 8 * P), 4);
  t.is(formatTime(0.456), '0.46');
  t.is(formatTime(123.4), '123');
  t.is(formatTime(2500), '2.5 s');
});

test('the chart of a report without incremental runs or references still renders as SVG', (t) => {
  const s = { median: 2, min: 1, max: 3 };
  const row: BenchRow = {
    mode: 'read',
    sizeBytes: 2 ** 30,
    threads: 1,
    dirtyRate: null,
    churn: false,
    iteration: 0,
    trackMem: 'none',
    samples: 3,
    frozenMs: s,
    totalMs: s,
    drainMs: s,
    xMemcpy: null,
    throughputMBps: s,
    pagesWritten: s,
    pagesDirtied: null,
    dataPagesWritten: null,
    peakRssBytes: s,
    pinnedBytes: s,
    workloadSpeed: s,
  };
  const svg = renderChart({
    runs: [row],
    reference: { memcpyMs: {}, memcpyFreshMs: {}, pvrMs: {}, writeMs: {}, bytes: {} },
    plan: { modes: ['read', 'splice'], runs: 3, command: 'predump bench <&>' },
    machine: {
      cpus: 2,
      memTotalBytes: 2 ** 34,
      kernel: '6.18',
      imagesFs: 'tmpfs',
      startedAt: '2026-01-01T00:00:00Z',
    },
  } as unknown as BenchReport);
  t.regex(svg, /<svg [^>]*height="\d+"/);
  t.true(svg.includes('predump bench &#60;&#38;&#62;'), 'text is escaped');
  t.false(svg.includes('incremental'), 'no incremental panels without incremental runs');
  t.true(svg.includes(MODE_COLORS.read));
  t.false(svg.includes(MODE_COLORS.splice), 'no bar for a mode without rows');
});

// ---- rendering in a browser -----------------------------------------------------------------

interface Png {
  width: number;
  height: number;
  /** RGBA or RGB bytes, row after row. */
  pixels: Buffer;
  channels: number;
}

/** Decodes an 8-bit RGB or RGBA PNG (what Chromium's screenshots are). */
export function decodePng(buf: Buffer): Png {
  if (!buf.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]))) {
    throw new Error('not a PNG');
  }
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  for (let at = 8; at < buf.length;) {
    const len = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    const data = buf.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      const depth = data[8];
      const colorType = data[9];
      if (depth !== 8 || (colorType !== 2 && colorType !== 6) || data[12] !== 0) {
        throw new Error(`unsupported PNG: depth ${depth}, colour type ${colorType}`);
      }
      channels = colorType === 6 ? 4 : 3;
    } else if (type === 'IDAT') {
      idat.push(data);
    }
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pixels[y * stride + x - channels]! : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels]! : 0;
      let v = line[x]!;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new Error(`bad PNG filter ${filter}`);
      pixels[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, pixels, channels };
}

/** Screenshots `file` in headless Chromium; checks the picture is a chart, not a blank page. */
async function assertRenders(
  t: ExecutionContext,
  file: string,
  svg: string,
  colors: string[],
): Promise<void> {
  const width = Number(/<svg [^>]*width="(\d+)"/.exec(svg)![1]);
  const height = Number(/<svg [^>]*height="(\d+)"/.exec(svg)![1]);
  const tmp = await tempDir(t, 'predump-chromium-');
  const png = path.join(tmp, 'chart.png');
  await execFileP(
    CHROMIUM!,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--user-data-dir=${path.join(tmp, 'profile')}`,
      `--screenshot=${png}`,
      `--window-size=${width},${height}`,
      `file://${file}`,
    ],
    { timeout: 60_000 },
  );
  t.true((await stat(png)).size > 1000, 'a screenshot was written');
  const img = decodePng(await readFile(png));
  t.is(img.width, width);
  t.is(img.height, height);
  const seen = new Set<number>();
  for (let i = 0; i < img.pixels.length; i += img.channels) {
    seen.add((img.pixels[i]! << 16) | (img.pixels[i + 1]! << 8) | img.pixels[i + 2]!);
  }
  // Text, axes and bars: many colours (anti-aliasing); a blank or broken page has a few.
  t.true(seen.size > 100, `${seen.size} distinct colours`);
  for (const c of colors) {
    t.true(seen.has(parseInt(c.slice(1), 16)), `bars of colour ${c} are drawn`);
  }
}
