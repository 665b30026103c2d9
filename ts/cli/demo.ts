/**
 * `predump demo`: the whole job on a process of our own, checked page by page.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Argv } from 'yargs';
import { EXIT, PredumpError } from '../errors.js';
import { exitStatusHelp, STATUS } from './options.js';
import { parseSize } from './sizes.js';
import { copyLine, frozenLine, modeLine } from './pre-dump.js';
import {
  formatBytes,
  inform,
  printJson,
  ProgressBar,
  reportError,
  say,
  type ArgsOf,
} from './output.js';

type Args = ArgsOf<typeof builder>;

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
    .epilogue(
      exitStatusHelp([
        ['0', 'demo ok: every page checked holds what it must'],
        ['1', 'a page was wrong, the workload failed its own check, or the demo failed'],
        STATUS.usage,
      ]),
    )
    .example('predump demo', '256 MiB, 2 threads, images in a temporary directory')
    .example('predump demo --size 1G -D /tmp/demo', 'a bigger one, keeping the images');
}

export async function handler(args: Args): Promise<void> {
  process.exitCode = await run(args).catch((err: unknown) => reportError(err, args.json));
}

async function run(args: Args): Promise<number> {
  const [{ pagesFileName, readPreDumpDir }, { preDump }, { Workload }] = await Promise.all([
    import('../images/index.js'),
    import('../predump.js'),
    import('../workload.js'),
  ]);
  const sizeBytes = parseSize(args.size, '--size');
  if (!Number.isInteger(args.threads) || args.threads < 0 || args.threads > 256) {
    throw new PredumpError(
      'EUSAGE',
      `--threads must be an integer from 0 to 256, got ${args.threads}`,
    );
  }
  const tmp = args.imagesDir ? undefined : await mkdtemp(path.join(os.tmpdir(), 'predump-demo-'));
  const imagesDir = args.imagesDir ?? path.join(tmp as string, 'images');
  inform(
    `starting the workload: ${formatBytes(sizeBytes)} of pattern memory, ${args.threads} compute threads`,
  );
  const workload = await Workload.start({ sizeBytes, threads: args.threads });
  try {
    inform(`pre-dumping pid ${workload.pid} into ${imagesDir}`);
    const bar = new ProgressBar('copying');
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
    // The pre-dump's own fields, as `pre-dump --json` prints them, and the demo's checks.
    if (args.json) printJson({ ok, ...result, check, selfCheck: self });
    const verdict = [
      `checked ${check.pagesChecked} workload pages against their known contents: ${check.mismatches} wrong` +
        (check.firstMismatches.length
          ? ` (first at 0x${check.firstMismatches[0].toString(16)})`
          : ''),
      `the workload's own check after the pre-dump: ${self.ok ? 'ok' : 'FAILED'}`,
    ];
    inform(
      [
        `pre-dumped pid ${result.pid} (${result.threads} threads): ` +
          `${result.pagesWritten} pages (${formatBytes(result.bytesWritten)})`,
        modeLine(result),
        frozenLine(result),
        copyLine(result),
        ...verdict,
        ok ? 'demo ok' : 'demo FAILED',
      ].join('\n'),
    );
    if (!ok && args.json) say(`predump: error: demo FAILED: ${verdict.join('; ')}`);
    return ok ? EXIT.ok : EXIT.failed;
  } finally {
    await workload.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}
