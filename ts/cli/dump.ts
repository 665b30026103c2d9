/**
 * `predump dump -t PID -D DIR`: the memory dump that closes a chain of
 * pre-dumps, with the target frozen throughout.
 */
import type { Argv } from 'yargs';
import { checkTree, imagesDirOption, treeOption } from './options.js';
import { EXIT } from '../errors.js';
import { preDump } from '../predump.js';
import { summary } from './pre-dump.js';
import { interruptible, printJson, ProgressBar, say, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'dump';
export const describe =
  "Dump a process's memory with it frozen throughout: the consistent snapshot that closes a chain";

export function builder(yargs: Argv) {
  return yargs
    .option('tree', { ...treeOption, describe: 'pid of the process' })
    .option('images-dir', imagesDirOption)
    .option('prev-images-dir', {
      type: 'string',
      describe: 'the last pre-dump of the chain: unchanged pages are left to it (PE_PARENT)',
    })
    .option('track-mem', {
      type: 'string',
      choices: ['auto', 'uffd-wp', 'soft-dirty', 'none'] as const,
      default: 'auto' as const,
      describe: 'the tracking the chain was made with (the dump ends it)',
    })
    .option('leave-stopped', {
      type: 'boolean',
      default: false,
      describe: 'leave the process job-stopped (as by SIGSTOP) and untraced, e.g. for a migration',
    })
    .option('leave-running', {
      type: 'boolean',
      describe: 'let the process run on after the dump (what happens without --leave-stopped)',
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
    .conflicts('leave-stopped', 'leave-running')
    .check(checkTree)
    .example(
      'predump dump -t 4242 -D /tmp/final --prev-images-dir /tmp/2 --leave-stopped',
      'close a chain',
    );
}

export async function handler(args: Args): Promise<void> {
  const bar = new ProgressBar('copying');
  const outcome = await interruptible(
    (signal) =>
      preDump({
        pid: args.tree,
        imagesDir: args.imagesDir,
        trackMem: args.trackMem,
        prevImagesDir: args.prevImagesDir,
        finalDump: true,
        leaveStopped: args.leaveStopped,
        onProgress: (d, t) => bar.update(d, t),
        signal,
      }).finally(() => bar.clear()),
    args.json,
  );
  if (!outcome.ok) {
    process.exitCode = outcome.status;
    return;
  }
  const result = outcome.value;
  if (args.json) printJson({ ok: true, leftStopped: args.leaveStopped, ...result });
  if (result.trackNote) say(`predump: note: ${result.trackNote}`);
  say(summary(result, true).replace(/^pre-dumped/, 'dumped'));
  if (args.leaveStopped) {
    say(`process ${args.tree} is left stopped: 'kill -CONT ${args.tree}' resumes it`);
  }
  process.exitCode = EXIT.ok;
}
