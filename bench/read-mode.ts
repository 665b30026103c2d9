/**
 * Read-mode pre-dump benchmark: the CLI pre-dumping the bundled workload into
 * tmpfs, beside reference figures measured in the same run (memcpy of the same
 * size into a fresh and a warm destination, process_vm_readv alone).
 *
 *   npm run bench:read -- [--sizes 64M,1G,4G] [--runs 5] [--dir /dev/shm] [--json FILE]
 *
 * Runs are interleaved (pre-dump, memcpy, readv, pre-dump, …) and every figure
 * is reported as median [min–max], so that a noisy shared machine shows as a
 * wide range instead of a wrong number.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';
import { native, packageRoot } from '../ts/native.js';
import { Workload } from '../ts/workload.js';
import { parseSize } from '../ts/cli/sizes.js';

const run = promisify(execFile);

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '64M,1G,4G' },
    runs: { type: 'string', default: '5' },
    dir: { type: 'string', default: '/dev/shm' },
    json: { type: 'string' },
  },
});
const runs = Number(values.runs);

interface Stat {
  median: number;
  min: number;
  max: number;
}
const stat = (xs: number[]): Stat => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return {
    median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2,
    min: s[0],
    max: s[s.length - 1],
  };
};
const fmt = (s: Stat, digits = 1): string =>
  `${s.median.toFixed(digits)} [${s.min.toFixed(digits)}–${s.max.toFixed(digits)}]`;

interface CliResult {
  frozenMs: number;
  stoppedWindowMs: number;
  scanMs: number;
  drainMs: number;
  totalMs: number;
  bytesWritten: number;
  peakRssBytes: number;
}

const results = [];
for (const sizeText of values.sizes.split(',')) {
  const sizeBytes = parseSize(sizeText, '--sizes');
  const workload = await Workload.start({ sizeBytes, threads: 1 });
  const samples = {
    stoppedWindowMs: [] as number[],
    frozenMs: [] as number[],
    scanMs: [] as number[],
    drainMs: [] as number[],
    wallMs: [] as number[],
    peakRssMiB: [] as number[],
    memcpyFreshMs: [] as number[],
    memcpyWarmMs: [] as number[],
    readvMs: [] as number[],
    ratioFresh: [] as number[],
    ratioWarm: [] as number[],
  };
  let bytes = 0;
  try {
    for (let i = -1; i < runs; i++) {
      const tmp = await mkdtemp(path.join(values.dir, 'predump-bench-'));
      const t0 = performance.now();
      const { stdout } = await run(
        process.execPath,
        [
          path.join(packageRoot, 'bin/predump.js'),
          'pre-dump',
          '-t',
          String(workload.pid),
          '-D',
          path.join(tmp, 'img'),
          '--json',
        ],
        { maxBuffer: 1 << 20 },
      );
      const wallMs = performance.now() - t0;
      await rm(tmp, { recursive: true, force: true });
      const r = JSON.parse(stdout) as CliResult;
      const memcpy = await native.memcpyReference(r.bytesWritten);
      const readv = await native.readvReference(workload.pid);
      if (i < 0) continue; // warm-up
      bytes = r.bytesWritten;
      samples.stoppedWindowMs.push(r.stoppedWindowMs);
      samples.frozenMs.push(r.frozenMs);
      samples.scanMs.push(r.scanMs);
      samples.drainMs.push(r.drainMs);
      samples.wallMs.push(wallMs);
      samples.peakRssMiB.push(r.peakRssBytes / 2 ** 20);
      samples.memcpyFreshMs.push(memcpy.freshMs);
      samples.memcpyWarmMs.push(memcpy.warmMs);
      samples.readvMs.push(readv.ms);
      // The pre-dump proper (freeze to synced image), without Node's start-up.
      const preDumpMs = r.stoppedWindowMs + r.drainMs;
      samples.ratioFresh.push(preDumpMs / memcpy.freshMs);
      samples.ratioWarm.push(preDumpMs / memcpy.warmMs);
    }
  } finally {
    await workload.stop();
  }
  const row = {
    size: sizeText,
    bytes,
    runs,
    ...Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stat(v)])),
  };
  results.push(row);
  console.error(`${sizeText}: done`);
}

const lines = [
  '| size | stopped (ms) | frozen, CRIU def. (ms) | scan (ms) | drain (ms) | CLI wall (ms) | memcpy fresh (ms) | memcpy warm (ms) | readv alone (ms) | pre-dump / memcpy fresh | pre-dump / memcpy warm | tool peak RSS (MiB) |',
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ...results.map((r) => {
    const s = r as unknown as Record<string, Stat> & { size: string };
    return `| ${s.size} | ${fmt(s.stoppedWindowMs, 2)} | ${fmt(s.frozenMs, 2)} | ${fmt(s.scanMs, 2)} | ${fmt(s.drainMs, 0)} | ${fmt(s.wallMs, 0)} | ${fmt(s.memcpyFreshMs, 0)} | ${fmt(s.memcpyWarmMs, 0)} | ${fmt(s.readvMs, 0)} | ${fmt(s.ratioFresh, 2)} | ${fmt(s.ratioWarm, 2)} | ${fmt(s.peakRssMiB, 1)} |`;
  }),
];
console.log(lines.join('\n'));
if (values.json) await writeFile(values.json, JSON.stringify({ results }, null, 2));
