/**
 * `predump pre-dump -t PID -D DIR`: copy a live process's memory into CRIU images.
 */
import type { Argv } from 'yargs';
import { checkTree, imagesDirOption, treeOption } from './options.js';
import { EXIT } from '../errors.js';
import { preDump, type PreDumpResult } from '../predump.js';
import {
  formatBytes,
  formatMs,
  interruptible,
  printJson,
  ProgressBar,
  say,
  type ArgsOf,
} from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'pre-dump';
export const describe = 'Copy the memory of a running process into CRIU image files';

export function builder(yargs: Argv) {
  return yargs
    .option('tree', {
      ...treeOption,
      describe: 'pid of the process to pre-dump (all its threads are frozen briefly)',
    })
    .option('images-dir', imagesDirOption)
    .option('pre-dump-mode', {
      type: 'string',
      choices: ['auto', 'read', 'splice', 'freeze-free'] as const,
      default: 'auto' as const,
      describe:
        'read: find the pages while frozen, copy them after thaw with process_vm_readv. ' +
        'splice: also reference them into pipes while frozen, by vmsplice run inside the target ' +
        "(CRIU's default; longer frozen, pins the memory until written). " +
        'freeze-free: never stop the target (but once, briefly, on the first run): take and ' +
        're-arm its written pages with uffd-wp while it runs, then copy them. ' +
        'auto: freeze-free where uffd-wp tracking is in use, else read',
    })
    .option('track-mem', {
      type: 'string',
      choices: ['auto', 'uffd-wp', 'soft-dirty', 'none'] as const,
      default: 'auto' as const,
      describe:
        'track writes so that the next pre-dump (with this one as --prev-images-dir) copies only ' +
        'what changed. auto: soft-dirty where the kernel has it (leaves nothing in the target), ' +
        'else uffd-wp, which leaves a userfaultfd and a marker fd in the target until ' +
        "'predump dump' or 'predump untrack'. none: every pre-dump copies everything",
    })
    .option('prev-images-dir', {
      type: 'string',
      describe:
        'the previous pre-dump of this process: unchanged pages it holds become PE_PARENT ' +
        "entries (a relative 'parent' link is made, as CRIU does)",
    })
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'print the result as one JSON object on stdout',
    })
    .example('predump pre-dump -t 4242 -D /tmp/img', 'pre-dump pid 4242 into /tmp/img')
    .example('predump pre-dump -t 4242 -D /tmp/img --json', 'the result as JSON on stdout')
    .example(
      'predump pre-dump -t 4242 -D /tmp/1 && predump pre-dump -t 4242 -D /tmp/2 --prev-images-dir /tmp/1',
      'an iterative pair: the second copies only what changed',
    )
    .example(
      'predump pre-dump -t 4242 -D /tmp/img --track-mem none --pre-dump-mode read',
      'a full pre-dump that leaves nothing in the target',
    )
    .check(checkTree);
}

export async function handler(args: Args): Promise<void> {
  process.exitCode = await run(args);
}

async function run(args: Args): Promise<number> {
  const bar = new ProgressBar('draining');
  const outcome = await interruptible(
    (signal) =>
      preDump({
        pid: args.tree,
        imagesDir: args.imagesDir,
        mode: args.preDumpMode,
        trackMem: args.trackMem,
        prevImagesDir: args.prevImagesDir,
        onProgress: (done, total) => bar.update(done, total),
        signal,
      }).finally(() => bar.clear()),
    args.json,
  );
  if (!outcome.ok) return outcome.status;
  const result = outcome.value;
  if (args.json) printJson({ ok: true, ...result });
  if (result.trackNote) say(`predump: note: ${result.trackNote}`);
  if (result.trackBackend === 'none') {
    say(
      'predump: note: no dirty tracking: a pre-dump with this one as its parent copies everything',
    );
  }
  if (result.fallback) {
    say(
      `predump: warning: ${result.requestedMode === 'auto' ? 'freeze-free' : result.requestedMode} mode is not possible here (${result.fallback}): used read mode`,
    );
  }
  say(summary(result));
  if (result.partial) {
    say(
      `predump: warning: process ${result.pid} exited during the copy: ` +
        'the images are a partial pre-dump, holding only the pages read before it exited',
    );
    return EXIT.partial;
  }
  return EXIT.ok;
}

export function summary(r: PreDumpResult, final = false): string {
  const gone = r.pagesGone > 0 ? `, ${r.pagesGone} pages gone before they were copied` : '';
  return [
    `pre-dumped pid ${r.pid} (${r.threads} thread${r.threads === 1 ? '' : 's'}) into ${r.imagesDir}`,
    r.mode === 'freeze-free'
      ? `  frozen   ${r.stoppedWindowMs > 0 ? `${formatMs(r.stoppedWindowMs)} (once, to set up the tracking)` : 'never'}; scan ${formatMs(r.scanMs)} with ${r.scanMethod}, while running`
      : `  frozen   ${formatMs(r.stoppedWindowMs)} (freezing ${formatMs(r.freezingMs)}, scan ${formatMs(r.scanMs)} with ${r.scanMethod}` +
        (r.mode === 'splice'
          ? `, ${r.injectedCalls} calls injected in ${formatMs(r.injectMs)})`
          : ')'),
    ...(r.mode === 'splice'
      ? [`  pipes    ${r.pipes}, ${formatBytes(r.pinnedBytes)} pinned until written`]
      : []),
    `  pages    ${r.pagesWritten} written of ${r.pagesScanned} scanned (${formatBytes(r.bytesWritten)})${gone}` +
      (r.parent ? `, ${r.pagesSkippedParent} left to the parent` : ''),
    `  drain    ${formatMs(r.drainMs)}, ${r.drainMBps.toFixed(0)} MB/s; total ${formatMs(r.totalMs)}`,
    final
      ? '  tracking ended: nothing of predump is left in the process'
      : `  tracking ${r.trackBackend}` +
        (r.trackBackend === 'uffd-wp'
          ? ` (a userfaultfd and a marker fd stay in the process until 'predump dump' or 'predump untrack -t ${r.pid}')`
          : ''),
  ].join('\n');
}
