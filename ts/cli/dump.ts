/**
 * `predump dump -t PID -D DIR`: the memory dump that closes a chain of
 * pre-dumps, with the target frozen throughout.
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
import { summary } from './pre-dump.js';
import { inform, interruptible, printJson, ProgressBar, say, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

const options = {
  tree: { ...treeOption, describe: 'pid of the process' },
  'images-dir': imagesDirOption,
  'prev-images-dir': {
    type: 'string',
    describe:
      'the last pre-dump of the chain: unchanged pages are left to it (PE_PARENT); ' +
      'a relative path is relative to --images-dir, as in CRIU',
  },
  'track-mem': {
    type: 'string',
    choices: ['auto', 'uffd-wp', 'soft-dirty', 'none'] as const,
    default: 'auto' as const,
    describe: 'the tracking the chain was made with (the dump ends it)',
  },
  // No default: with one, --leave-running alone conflicted with it.
  'leave-stopped': {
    type: 'boolean',
    describe: 'leave the process job-stopped (as by SIGSTOP) and untraced, e.g. for a migration',
  },
  'leave-running': {
    type: 'boolean',
    describe: 'let the process run on after the dump (what happens without --leave-stopped)',
  },
  json: { type: 'boolean', default: false, describe: 'print the result as JSON' },
  ...pageServerClientOptions,
} as const;

const conflicts = [['leave-stopped', 'leave-running']] as const;

/** -t, then the page server's options. */
const check = (argv: Record<string, unknown>): true =>
  checkTree(argv) && checkPageServerClient(argv);

export const spec: CommandSpec = { options, conflicts, check };

export function builder(yargs: Argv) {
  return yargs
    .options(options)
    .conflicts(...conflicts[0])
    .check(check)
    .epilogue(
      exitStatusHelp([
        STATUS.ok,
        STATUS.failed,
        STATUS.usage,
        ['3', 'partial dump: the target exited (killed) while its pages were copied'],
        STATUS.interrupted,
      ]),
    )
    .example(
      'predump dump -t 4242 -D /tmp/final --prev-images-dir /tmp/2 --leave-stopped',
      'close a chain',
    );
}

export async function handler(args: Args): Promise<void> {
  const { preDump } = await import('../predump.js');
  const leaveStopped = args.leaveStopped === true;
  const bar = new ProgressBar('copying');
  const outcome = await interruptible(
    (signal) =>
      preDump({
        pid: args.tree,
        imagesDir: args.imagesDir,
        trackMem: args.trackMem,
        prevImagesDir: args.prevImagesDir,
        pageServer: pageServerTarget(args),
        finalDump: true,
        leaveStopped,
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
  // What happened when (copiedWhileFrozen, copyMs, syncMs…): the result says.
  if (args.json) printJson({ ok: true, leftStopped: leaveStopped, ...result });
  if (result.leftoversRemoved) {
    inform(
      `predump: note: removed ${result.leftoversRemoved} that a predump which died while ` +
        `injecting had left in process ${result.pid}`,
    );
  }
  if (result.trackNote) inform(`predump: note: ${result.trackNote}`);
  inform(summary(result, true).replace(/^pre-dumped/, 'dumped'));
  if (result.partial) {
    // Only a SIGKILL ends a process frozen by ptrace: its images hold what was read before.
    const gone = result.processes.filter((p) => p.partial).map((p) => p.pid);
    say(
      `predump: warning: process${gone.length > 1 ? 'es' : ''} ${(gone.length > 0 ? gone : [result.pid]).join(', ')} exited during the copy: ` +
        'the images are a partial dump, holding only the pages read before it exited',
    );
    process.exitCode = EXIT.partial;
    return;
  }
  if (leaveStopped && result.processes.length > 1) {
    const pids = result.processes.map((p) => p.pid).join(' ');
    inform(
      `the ${result.processes.length} processes of the tree of ${args.tree} are left stopped: ` +
        `'kill -CONT ${pids}' resumes them`,
    );
  } else if (leaveStopped) {
    inform(`process ${args.tree} is left stopped: 'kill -CONT ${args.tree}' resumes it`);
  }
  process.exitCode = EXIT.ok;
}
