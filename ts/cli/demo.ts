/**
 * `predump demo`: the whole job on a process of our own, checked page by page.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Argv } from 'yargs';
import { EXIT, PredumpError } from '../errors.js';
import { pagesFileName, readPreDumpDir } from '../images/index.js';
import { preDump } from '../predump.js';
import { Workload } from '../workload.js';
import { parseSize } from './sizes.js';
import {
  formatBytes,
  formatMs,
  printJson,
  ProgressBar,
  reportError,
  say,
  type ArgsOf,
} from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'demo';
export const describe =
  'Start the bundled workload, pre-dump it, check every dumped page, and stop it';

export function builder(yargs: Argv) {
  return yargs
    .option('size', {
      type: 'string',
      default: '256M',
      describe: 'memory of the workload (suffixes K, M, G)',
    })
    .option('threads', { type: 'number', default: 2, describe: 'compute threads of the workload' })
    .option('images-dir', {
      alias: 'D',
      type: 'string',
      describe: 'keep the images here (default: a temporary directory, removed afterwards)',
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
    .example('predump demo', '256 MiB, 2 threads, images in a temporary directory')
    .example('predump demo --size 1G -D /tmp/demo', 'a bigger one, keeping the images');
}

export async function handler(args: Args): Promise<void> {
  process.exitCode = await run(args).catch((err: unknown) => reportError(err, args.json));
}

async function run(args: Args): Promise<number> {
  const sizeBytes = parseSize(args.size, '--size');
  if (!Number.isInteger(args.threads) || args.threads < 0 || args.threads > 256) {
    throw new PredumpError(
      'EUSAGE',
      `--threads must be an integer from 0 to 256, got ${args.threads}`,
    );
  }
  const tmp = args.imagesDir ? undefined : await mkdtemp(path.join(os.tmpdir(), 'predump-demo-'));
  const imagesDir = args.imagesDir ?? path.join(tmp as string, 'images');
  say(
    `starting the workload: ${formatBytes(sizeBytes)} of pattern memory, ${args.threads} compute threads`,
  );
  const workload = await Workload.start({ sizeBytes, threads: args.threads });
  try {
    say(`pre-dumping pid ${workload.pid} into ${imagesDir}`);
    const bar = new ProgressBar('draining');
    const result = await preDump({
      pid: workload.pid,
      imagesDir,
      onProgress: (d, t) => bar.update(d, t),
    }).finally(() => bar.clear());
    const dir = await readPreDumpDir(imagesDir);
    const check = await workload.checkImage(path.join(imagesDir, pagesFileName(1)), dir.entries);
    const self = await workload.selfCheck();
    const ok =
      check.mismatches === 0 && check.trailingBytes === 0 && self.ok && check.pagesChecked > 0;
    if (args.json) printJson({ ok, result, check, selfCheck: self });
    say(
      [
        `frozen for ${formatMs(result.stoppedWindowMs)} (${result.threads} threads, scan ${formatMs(result.scanMs)})`,
        `${result.pagesWritten} pages (${formatBytes(result.bytesWritten)}) copied in ${formatMs(result.drainMs)}: ${result.drainMBps.toFixed(0)} MB/s`,
        `checked ${check.pagesChecked} workload pages against their known contents: ${check.mismatches} wrong` +
          (check.firstMismatches.length
            ? ` (first at 0x${check.firstMismatches[0].toString(16)})`
            : ''),
        `the workload's own check after the pre-dump: ${self.ok ? 'ok' : 'FAILED'}`,
        ok ? 'demo ok' : 'demo FAILED',
      ].join('\n'),
    );
    return ok ? EXIT.ok : EXIT.failed;
  } finally {
    await workload.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}
