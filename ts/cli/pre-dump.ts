/**
 * `predump pre-dump -t PID -D DIR`: copy a live process's memory into CRIU images.
 */
import type { Argv } from 'yargs';
import type { CommandSpec } from './fast-args.js';
import {
  checkPageServerClient,
  pageServerClientOptions,
  pageServerTarget,
} from './page-server-client.js';
import { checkTree, exitStatusHelp, imagesDirOption, STATUS, treeOption } from './options.js';
import { EXIT } from '../errors.js';
import { pagesFileName } from '../images/names.js';
import type { PreDumpResult } from '../predump.js';
import {
  formatBytes,
  formatMs,
  inform,
  interruptible,
  printJson,
  ProgressBar,
  say,
  type ArgsOf,
} from './output.js';

type Args = ArgsOf<typeof builder>;

const options = {
  tree: {
    ...treeOption,
    describe: 'pid of the process to pre-dump (all its threads are frozen briefly)',
  },
  'images-dir': imagesDirOption,
  'pre-dump-mode': {
    type: 'string',
    choices: ['auto', 'read', 'splice', 'freeze-free'] as const,
    default: 'auto' as const,
    describe:
      'read: find the pages while frozen, copy them after thaw with process_vm_readv. ' +
      'splice: also reference them into pipes while frozen, by vmsplice run inside the target ' +
      "(CRIU's default; longer frozen, pins the memory until written). " +
      'freeze-free: never stop the target (but once, briefly, on the first run): take and ' +
      're-arm its written pages with uffd-wp while it runs, then copy them. ' +
      'auto: freeze-free where uffd-wp tracking is in use, else read (read on a tree of ' +
      'more than one process; splice or freeze-free there only when asked for)',
  },
  'track-mem': {
    type: 'string',
    choices: ['auto', 'uffd-wp', 'soft-dirty', 'none'] as const,
    default: 'auto' as const,
    describe:
      'track writes so that the next pre-dump (with this one as --prev-images-dir) copies only ' +
      'what changed. auto: soft-dirty where the kernel has it (leaves nothing in the target; ' +
      "the tracking CRIU uses: 'criu dump --track-mem' can continue the chain), " +
      'else (or with --pre-dump-mode freeze-free) uffd-wp, which leaves a userfaultfd and a marker fd in the target until ' +
      "'predump dump' or 'predump untrack': criu dump refuses a process holding them, so run " +
      "'predump untrack -t PID' before it. none: every pre-dump copies everything",
  },
  'prev-images-dir': {
    type: 'string',
    describe:
      "the previous pre-dump of this process (predump's or criu pre-dump's): unchanged pages " +
      'it holds become PE_PARENT entries. As in CRIU, a relative path is relative to ' +
      "--images-dir (e.g. ../1), and a relative 'parent' link is made",
  },
  json: {
    type: 'boolean',
    default: false,
    describe: 'print the result as one JSON object on stdout',
  },
  ...pageServerClientOptions,
} as const;

/** -t, then the page server's options. */
const check = (argv: Record<string, unknown>): true =>
  checkTree(argv) && checkPageServerClient(argv);

export const spec: CommandSpec = { options, check };

export function builder(yargs: Argv) {
  return yargs
    .options(options)
    .example('predump pre-dump -t 4242 -D /tmp/img', 'pre-dump pid 4242 into /tmp/img')
    .example('predump pre-dump -t 4242 -D /tmp/img --json', 'the result as JSON on stdout')
    .example(
      'predump pre-dump -t 4242 -D /tmp/1 && predump pre-dump -t 4242 -D /tmp/2 --prev-images-dir ../1',
      'an iterative pair: the second copies only what changed',
    )
    .example(
      'criu dump -t 4242 -D /tmp/3 --track-mem --prev-images-dir ../2',
      "CRIU's final dump on top (soft-dirty kernels; after uffd-wp: predump untrack -t 4242 first)",
    )
    .example(
      'predump pre-dump -t 4242 -D /tmp/local --page-server --address dst-host --port 27000',
      "the pages to a page server on another host ('predump page-server' or 'criu page-server')",
    )
    .example(
      'predump pre-dump -t 4242 -D /tmp/img --track-mem none --pre-dump-mode read',
      'a full pre-dump that leaves nothing in the target',
    )
    .epilogue(
      exitStatusHelp([STATUS.ok, STATUS.failed, STATUS.usage, STATUS.partial, STATUS.interrupted]),
    )
    .check(check);
}

export async function handler(args: Args): Promise<void> {
  process.exitCode = await run(args);
}

async function run(args: Args): Promise<number> {
  const { preDump } = await import('../predump.js');
  const bar = new ProgressBar('draining');
  const outcome = await interruptible(
    (signal) =>
      preDump({
        pid: args.tree,
        imagesDir: args.imagesDir,
        mode: args.preDumpMode,
        trackMem: args.trackMem,
        prevImagesDir: args.prevImagesDir,
        pageServer: pageServerTarget(args),
        onProgress: (done, total) => bar.update(done, total),
        signal,
      }).finally(() => bar.clear()),
    args.json,
  );
  if (!outcome.ok) return outcome.status;
  const result = outcome.value;
  if (args.json) printJson({ ok: true, ...result });
  if (result.leftoversRemoved) {
    inform(
      `predump: note: removed ${result.leftoversRemoved} that a predump which died while ` +
        `injecting had left in process ${result.pid}`,
    );
  }
  // A tree's note is the reason for the one below.
  if (result.trackNote && (result.processes.length <= 1 || result.trackBackend !== 'none'))
    inform(`predump: note: ${result.trackNote}`);
  // A warning, kept with --json: a script that goes on to 'criu dump' needs it as much.
  if (result.trackBackend === 'uffd-wp') say(uffdHandover(result.pid, result.processes.length));
  for (const pid of result.trackedAlone ?? []) {
    say(
      `predump: warning: process ${pid} holds predump's uffd-wp tracking from an earlier ` +
        'pre-dump of it alone, which a pre-dump of the tree without tracking neither uses nor ends: ' +
        `'criu dump' refuses it; run 'predump untrack -t ${pid}' first`,
    );
  }
  if (result.trackBackend === 'none') {
    inform(
      `predump: note: no dirty tracking${result.processes.length > 1 && result.trackNote ? ` (${result.trackNote})` : ''}: ` +
        'a pre-dump with this one as its parent copies everything',
    );
  }
  if (result.fallback) {
    say(
      `predump: warning: ${result.requestedMode === 'auto' ? 'freeze-free' : result.requestedMode} mode is not possible here (${result.fallback}): used read mode`,
    );
  }
  // A tree in splice mode of which some processes could not be spliced (all: the fallback above).
  const notSpliced = result.fallback ? [] : result.processes.filter((p) => p.fallback);
  for (const p of notSpliced) {
    say(
      `predump: warning: splice mode was not possible for process ${p.pid} (${p.fallback}): ` +
        'its pages were copied in read mode',
    );
  }
  inform(summary(result));
  if (result.partial) {
    const gone = result.processes.filter((p) => p.partial).map((p) => p.pid);
    say(
      `predump: warning: process${gone.length === 1 ? '' : 'es'} ${(gone.length > 0 ? gone : [result.pid]).join(', ')} exited during the copy: ` +
        'the images are a partial pre-dump, holding only the pages read before it exited',
    );
    return EXIT.partial;
  }
  return EXIT.ok;
}

/** What a process (or the tree of `pid`) tracked with uffd-wp needs before CRIU may dump it. */
export function uffdHandover(pid: number, processes = 1): string {
  const who =
    processes > 1
      ? `the ${processes} processes of the tree of ${pid} now hold`
      : `process ${pid} now holds`;
  return (
    `predump: warning: ${who} predump's userfaultfd (uffd-wp tracking), which ` +
    "'criu dump' refuses (\"Can't dump file … anon_inode:[userfaultfd]\"). Before criu dump, " +
    `run 'predump untrack -t ${pid}' (criu then dumps every page: its --track-mem needs ` +
    "soft-dirty), or close the chain with 'predump dump'"
  );
}

/** The mode used, and why: asked for, chosen by auto, or fallen back to. */
export function modeLine(r: PreDumpResult): string {
  const why =
    r.fallback !== null
      ? `: ${r.requestedMode === 'auto' ? 'freeze-free' : r.requestedMode} was not possible here`
      : r.requestedMode !== 'auto'
        ? ''
        : r.mode === 'freeze-free'
          ? ' (auto: uffd-wp tracking is in use)'
          : isTreeResult(r)
            ? " (auto: a tree's default)"
            : ' (auto)';
  const what =
    r.mode === 'freeze-free'
      ? isTreeResult(r)
        ? 'the tree ran throughout, each process pre-dumped in turn while it ran'
        : 'the target ran throughout'
      : r.mode === 'splice'
        ? 'pages referenced into pipes while frozen, written after the thaw'
        : 'pages found while frozen, copied after the thaw';
  return `  mode     ${r.mode}${why}: ${what}`;
}

/** When the target was stopped, and what happened meanwhile. */
export function frozenLine(r: PreDumpResult): string {
  if (r.mode === 'freeze-free' && isTreeResult(r)) {
    return (
      `  frozen   ${r.stoppedWindowMs > 0 ? `${formatMs(r.stoppedWindowMs)} at most (processes without tracking, each once and alone, to set it up)` : 'never'}; ` +
      `scan ${formatMs(r.scanMs)} with ${r.scanMethod}, while the processes ran`
    );
  }
  if (r.mode === 'freeze-free') {
    return (
      `  frozen   ${r.stoppedWindowMs > 0 ? `${formatMs(r.stoppedWindowMs)} (once, to set up the tracking)` : 'never'}; ` +
      `scan ${formatMs(r.scanMs)} with ${r.scanMethod}, while it ran`
    );
  }
  return (
    `  frozen   ${formatMs(r.stoppedWindowMs)} (freezing ${formatMs(r.freezingMs)}, scan ${formatMs(r.scanMs)} with ${r.scanMethod}` +
    (r.mode === 'splice' ? `, ${r.injectedCalls} calls injected in ${formatMs(r.injectMs)})` : ')')
  );
}

/**
 * When the pages were copied, and how long that took: after the thaw (a pre-dump), or
 * inside the frozen window with only the fsync after the thaw (a dump).
 */
export function copyLine(r: PreDumpResult): string {
  const copy = `${formatMs(r.copyMs)}, ${r.copyMBps.toFixed(0)} MB/s`;
  if (r.copiedWhileFrozen) {
    return (
      `  copy     ${copy}, inside the ${formatMs(r.stoppedWindowMs)} frozen window; ` +
      `fsync ${formatMs(r.syncMs)} after the thaw; total ${formatMs(r.totalMs)}`
    );
  }
  const when =
    r.mode === 'freeze-free'
      ? 'while the target ran'
      : `after the thaw${r.mode === 'splice' ? ' (from the pipes)' : ''}`;
  return `  copy     ${copy}, ${when}; fsync ${formatMs(r.syncMs)}; total ${formatMs(r.totalMs)}`;
}

/** A tree's result (more than one process, or some left out), not one process's. */
function isTreeResult(r: PreDumpResult): boolean {
  return r.processes.length > 1 || r.leftOut.length > 0;
}

export function summary(r: PreDumpResult, final = false): string {
  const gone = r.pagesGone > 0 ? `, ${r.pagesGone} pages gone before they were copied` : '';
  const tree = isTreeResult(r);
  const plural = (n: number, one: string, many = `${one}s`): string =>
    `${n} ${n === 1 ? one : many}`;
  return [
    (tree
      ? `pre-dumped the tree of pid ${r.pid}: ${plural(r.processes.length, 'process', 'processes')} ` +
        `(${plural(r.threads, 'thread')}) into ${r.imagesDir}`
      : `pre-dumped pid ${r.pid} (${plural(r.threads, 'thread')}) into ${r.imagesDir}`) +
      (r.pageServer
        ? `; pages sent to the page server at ${r.pageServer.address}:${r.pageServer.port}` +
          ` (${r.pageServer.format} headers${r.pageServer.tls ? ', TLS' : ''}, stored in ${formatMs(r.pageServer.sessionMs)})`
        : ''),
    ...(final ? [] : [modeLine(r)]),
    frozenLine(r),
    ...(r.mode === 'splice'
      ? [`  pipes    ${r.pipes}, ${formatBytes(r.pinnedBytes)} pinned until written`]
      : []),
    `  pages    ${r.pagesWritten} written of ${r.pagesScanned} scanned (${formatBytes(r.bytesWritten)})${gone}` +
      (r.parent ? `, ${r.pagesSkippedParent} left to the parent` : '') +
      (r.parent && (r.sharedMemory ?? []).length > 0
        ? `; shared memory ${r.sharedPagesWritten} written, ${r.sharedPagesSkippedParent} left to the parent (equal to the chain's copy)`
        : ''),
    ...(tree ? treeLines(r) : skippedLines(r)),
    copyLine(r),
    final
      ? `  tracking ${r.trackBackend === 'none' ? 'none' : `${r.trackBackend}, read`}, then ended: nothing of predump is left in the ${tree ? 'tree' : 'process'}`
      : `  tracking ${r.trackBackend}` +
        (r.trackBackend === 'uffd-wp'
          ? ` (a userfaultfd and a marker fd stay in the process until 'predump dump' or 'predump untrack -t ${r.pid}')`
          : ''),
  ].join('\n');
}

/** The shared mappings left out, each with its size and why. */
function skippedLines(r: PreDumpResult): string[] {
  return r.notPreDumped.map(
    (n) =>
      `  skipped  ${n.name || '(unnamed)'} in process ${n.pid} at 0x${n.start.toString(16)} ` +
      `(${formatBytes(n.bytes)}): ${n.reason}`,
  );
}

/** A tree's processes, shared memory, and what was left out. */
export function treeLines(r: PreDumpResult): string[] {
  return [
    ...r.processes.map(
      (p) =>
        `  process  ${p.pid}${p.comm ? ` (${p.comm})` : ''}, parent ${p.ppid ?? '?'}: ` +
        `${p.pagesWritten} pages written of ${p.pagesScanned} scanned, ${pagesFileName(p.pagesId)}` +
        (p.inParent === 'new' ? '; new since the parent images' : '') +
        (p.inParent === 'pid-reused'
          ? '; its pid was another process in the parent images (not matched to them)'
          : '') +
        (p.partial ? '; exited during the copy (partial)' : '') +
        (p.fallback && r.mode === 'splice' ? '; not spliced: copied in read mode' : ''),
    ),
    ...(r.sharedMemory ?? []).map(
      (s) =>
        `  shmem    ${s.shmid}: ${formatBytes(s.sizeBytes)}, ${s.pagesWritten} pages written once, ` +
        `${pagesFileName(s.pagesId)}; mapped by ${s.pids.length === 1 ? 'process' : 'processes'} ${s.pids.join(', ')}` +
        (s.inParent === 'yes'
          ? `; ${s.pagesSkippedParent} left to the parent (equal to the chain's copy of ${s.pagesCompared} compared)`
          : s.inParent === 'new'
            ? '; new since the parent images'
            : s.inParent === null
              ? ''
              : `; copied whole (${s.inParent})`),
    ),
    ...skippedLines(r),
    ...r.droppedFromParent.map(
      (pid) => `  dropped  ${pid}: in the parent images, no longer in the tree (exited)`,
    ),
    ...r.leftOut.map(
      (l) =>
        `  left out ${l.pid}${l.comm ? ` (${l.comm})` : ''}, child of ${l.ppid}: ` +
        (l.reason === 'zombie'
          ? 'a zombie (it has exited and has no memory left)'
          : 'it exited while the tree was being frozen'),
    ),
  ];
}
