/**
 * Pre-dump benchmark: the CLI pre-dumping the bundled workload into tmpfs in
 * each mode, beside reference figures measured in the same run: memcpy of the
 * same size into a fresh and into a warm destination, process_vm_readv alone,
 * and writing the same bytes into a new file in the images' file system (which
 * pays for the file's new pages, as the pages image does).
 *
 *   npm run bench:predump -- [--sizes 64M,1G,4G] [--modes read,splice] [--runs 5]
 *                            [--dir /dev/shm] [--json FILE]
 *
 * Runs are interleaved (read, splice, references, read, splice, …) after one
 * warm-up round, and every figure is reported as median [min–max], so that a
 * noisy shared machine shows as a wide range instead of a wrong number.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { parseSize } from '../ts/cli/sizes.js';
import { native, packageRoot } from '../ts/native.js';
import { Workload } from '../ts/workload.js';

const run = promisify(execFile);

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '64M,1G,4G' },
    modes: { type: 'string', default: 'read,splice' },
    runs: { type: 'string', default: '5' },
    dir: { type: 'string', default: '/dev/shm' },
    json: { type: 'string' },
  },
});
const runs = Number(values.runs);
const modes = values.modes.split(',') as ('read' | 'splice')[];

export interface Stat {
  median: number;
  min: number;
  max: number;
}
export function stat(xs: number[]): Stat {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return {
    median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2,
    min: s[0],
    max: s[s.length - 1],
  };
}
const fmt = (s: Stat, digits = 1): string =>
  `${s.median.toFixed(digits)} [${s.min.toFixed(digits)}–${s.max.toFixed(digits)}]`;

interface CliResult {
  mode: string;
  stoppedWindowMs: number;
  frozenMs: number;
  scanMs: number;
  injectMs: number;
  drainMs: number;
  bytesWritten: number;
  pinnedBytes: number;
  pipes: number;
  peakRssBytes: number;
}

async function preDumpOnce(pid: number, mode: string): Promise<CliResult> {
  const tmp = await mkdtemp(path.join(values.dir, 'predump-bench-'));
  try {
    const { stdout } = await run(
      process.execPath,
      [
        path.join(packageRoot, 'bin/predump.js'),
        'pre-dump',
        '-t',
        String(pid),
        '-D',
        path.join(tmp, 'img'),
        '--pre-dump-mode',
        mode,
        '--json',
      ],
      { maxBuffer: 1 << 20 },
    );
    return JSON.parse(stdout) as CliResult;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

const keys = [
  'stoppedWindowMs',
  'frozenMs',
  'scanMs',
  'injectMs',
  'drainMs',
  'preDumpMs',
  'peakRssMiB',
  'pinnedMiB',
  'pipes',
  'ratioFresh',
  'ratioWarm',
  'ratioWrite',
] as const;
type Key = (typeof keys)[number];

const rows: Record<string, unknown>[] = [];
for (const sizeText of values.sizes.split(',')) {
  const sizeBytes = parseSize(sizeText, '--sizes');
  const workload = await Workload.start({ sizeBytes, threads: 1 });
  const per = new Map<string, Record<Key, number[]>>(
    modes.map((m) => [
      m,
      Object.fromEntries(keys.map((k) => [k, [] as number[]])) as Record<Key, number[]>,
    ]),
  );
  const ref = {
    memcpyFreshMs: [] as number[],
    memcpyWarmMs: [] as number[],
    readvMs: [] as number[],
    writeMs: [] as number[],
  };
  let bytes = 0;
  try {
    for (let i = -1; i < runs; i++) {
      const results = new Map<string, CliResult>();
      for (const mode of modes) results.set(mode, await preDumpOnce(workload.pid, mode));
      bytes = [...results.values()][0].bytesWritten;
      const memcpy = await native.memcpyReference(bytes);
      const readv = await native.readvReference(workload.pid);
      const writeMs = await native.writeReference(values.dir, bytes);
      if (i < 0) continue; // warm-up round
      ref.writeMs.push(writeMs);
      ref.memcpyFreshMs.push(memcpy.freshMs);
      ref.memcpyWarmMs.push(memcpy.warmMs);
      ref.readvMs.push(readv.ms);
      for (const [mode, r] of results) {
        const s = per.get(mode)!;
        // The pre-dump proper: freeze to synced image, without Node's start-up.
        const preDumpMs = r.stoppedWindowMs + r.drainMs;
        s.stoppedWindowMs.push(r.stoppedWindowMs);
        s.frozenMs.push(r.frozenMs);
        s.scanMs.push(r.scanMs);
        s.injectMs.push(r.injectMs);
        s.drainMs.push(r.drainMs);
        s.preDumpMs.push(preDumpMs);
        s.peakRssMiB.push(r.peakRssBytes / 2 ** 20);
        s.pinnedMiB.push(r.pinnedBytes / 2 ** 20);
        s.pipes.push(r.pipes);
        s.ratioFresh.push(preDumpMs / memcpy.freshMs);
        s.ratioWarm.push(preDumpMs / memcpy.warmMs);
        s.ratioWrite.push(preDumpMs / writeMs);
      }
    }
  } finally {
    await workload.stop();
  }
  for (const mode of modes) {
    const s = per.get(mode)!;
    rows.push({
      size: sizeText,
      bytes,
      mode,
      ...Object.fromEntries(keys.map((k) => [k, stat(s[k])])),
      memcpyFreshMs: stat(ref.memcpyFreshMs),
      memcpyWarmMs: stat(ref.memcpyWarmMs),
      readvMs: stat(ref.readvMs),
      writeMs: stat(ref.writeMs),
    });
  }
  console.error(`${sizeText}: done`);
}

const S = (r: Record<string, unknown>, k: string, d = 1): string => fmt(r[k] as Stat, d);
console.log(
  [
    `${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${os.release()}; ${runs} runs after a warm-up; median [min–max]`,
    '',
    '| size | mode | stopped (ms) | scan (ms) | inject (ms) | drain (ms) | pre-dump (ms) | memcpy fresh (ms) | memcpy warm (ms) | readv alone (ms) | write alone (ms) | ÷ memcpy fresh | ÷ memcpy warm | ÷ write alone | pinned (MiB) | peak RSS (MiB) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${String(r.size)} | ${String(r.mode)} | ${S(r, 'stoppedWindowMs', 2)} | ${S(r, 'scanMs', 2)} | ${S(r, 'injectMs', 1)} | ${S(r, 'drainMs', 0)} | ${S(r, 'preDumpMs', 0)} | ${S(r, 'memcpyFreshMs', 0)} | ${S(r, 'memcpyWarmMs', 0)} | ${S(r, 'readvMs', 0)} | ${S(r, 'writeMs', 0)} | ${S(r, 'ratioFresh', 2)} | ${S(r, 'ratioWarm', 2)} | ${S(r, 'ratioWrite', 2)} | ${S(r, 'pinnedMiB', 0)} | ${S(r, 'peakRssMiB', 1)} |`,
    ),
  ].join('\n'),
);
if (values.json) await writeFile(values.json, JSON.stringify({ rows }, null, 2));
