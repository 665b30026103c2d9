/**
 * Incremental pre-dumps with uffd-wp dirty tracking: a workload dirties
 * PERMILLE/1000 of its pattern pages between pre-dumps; each pre-dump after the
 * first has the previous one as its parent.
 *
 *   npm run bench:incremental -- [--size 256M] [--permille 62] [--runs 8] [--dir /dev/shm]
 *
 * Per pre-dump: pages dirtied by the workload, pages written, their ratio, and
 * the time the target was stopped. The first incremental pre-dump also copies
 * pages that the first arming reported (see docs/BENCHMARKS.md); the steady
 * state is from the second on.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../ts/cli/sizes.js';
import { native } from '../ts/native.js';
import { preDump } from '../ts/predump.js';
import { Workload } from '../ts/workload.js';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '256M' },
    permille: { type: 'string', default: '62' },
    runs: { type: 'string', default: '8' },
    dir: { type: 'string', default: '/dev/shm' },
  },
});
const tmp = await mkdtemp(path.join(values.dir, 'predump-incremental-'));
const w = await Workload.start({ sizeBytes: parseSize(values.size, '--size'), threads: 1 });
try {
  console.log(
    '| pre-dump | dirtied | written | written ÷ dirtied | stopped (ms) | left to parent |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  let prev: string | undefined;
  for (let i = 0; i < Number(values.runs); i++) {
    const dirtied = i > 0 ? (await w.dirty(Number(values.permille), 1000 + i)).dirtied : 0;
    const dir = path.join(tmp, String(i));
    const r = await preDump({
      pid: w.pid,
      imagesDir: dir,
      trackMem: 'uffd-wp',
      prevImagesDir: prev,
    });
    const ratio = dirtied > 0 ? (r.pagesWritten / dirtied).toFixed(3) : '–';
    console.log(
      `| ${i === 0 ? 'first' : i} | ${dirtied} | ${r.pagesWritten} | ${ratio} | ${r.stoppedWindowMs.toFixed(2)} | ${r.pagesSkippedParent} |`,
    );
    prev = dir;
  }
} finally {
  await native.untrack(w.pid).catch(() => false);
  await w.stop();
  await rm(tmp, { recursive: true, force: true });
}
