/**
 * `predump verify -t PID -D DIR`: compare an image chain with the live memory.
 */
import type { Argv } from 'yargs';
import { checkTree, exitStatusHelp, STATUS, treeOption } from './options.js';
import { EXIT } from '../errors.js';
import type { CommandSpec } from './fast-args.js';
import { inform, printJson, reportError, say, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

const options = {
  tree: { ...treeOption, describe: 'pid of the process' },
  'images-dir': {
    alias: 'D',
    type: 'string',
    demandOption: true,
    describe: "the newest images of the chain (its 'parent' links are followed)",
  },
  json: { type: 'boolean', default: false, describe: 'print the result as JSON' },
} as const;

export const spec: CommandSpec = { options, check: checkTree };

export function builder(yargs: Argv) {
  return yargs
    .options(options)
    .check(checkTree)
    .example('predump verify -t 4242 -D /tmp/final', 'zero mismatches right after a dump')
    .epilogue(
      exitStatusHelp([
        ['0', 'every page matches and none is missing'],
        ['1', 'a page differs, is missing or unreadable, or the verification failed'],
        STATUS.usage,
      ]),
    );
}

export async function handler(args: Args): Promise<void> {
  try {
    const { readdir } = await import('node:fs/promises');
    const { isTreeDir } = await import('../images/index.js');
    if (isTreeDir(await readdir(args.imagesDir).catch(() => [] as string[]))) {
      process.exitCode = await verifyTree(args);
      return;
    }
    const { verifyChain } = await import('../verify.js');
    const r = await verifyChain(args.tree, args.imagesDir);
    const ok = r.mismatches === 0 && r.notInChain === 0 && r.missing === 0 && r.unreadable === 0;
    if (args.json) printJson({ ok, ...r });
    if (!ok && args.json) {
      say(
        `predump: error: verify FAILED: ${r.mismatches} mismatches, ${r.notInChain} not in the ` +
          `chain, ${r.unreadable} unreadable, ${r.missing} missing`,
      );
    }
    inform(
      [
        `verified process ${r.pid} against ${r.chain.length} image director${r.chain.length === 1 ? 'y' : 'ies'}`,
        `  pages compared   ${r.pagesCompared}`,
        `  mismatches       ${r.mismatches}${r.firstMismatches.length ? ` (first at ${r.firstMismatches[0]})` : ''}`,
        `  not in the chain ${r.notInChain}`,
        `  unreadable now   ${r.unreadable}`,
        `  missing          ${r.missing} present pages the images do not hold`,
        ...(r.rseqOnly > 0
          ? [`  rseq only        ${r.rseqOnly} (pages differing only in a thread's rseq area)`]
          : []),
        ok ? 'verify ok' : 'verify FAILED',
      ].join('\n'),
    );
    process.exitCode = ok ? EXIT.ok : EXIT.failed;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}

/** A tree's images: every process, every shared object, and the tree's membership. */
async function verifyTree(args: Args): Promise<number> {
  const { verifyTree } = await import('../tree-verify.js');
  const r = await verifyTree(args.tree, args.imagesDir);
  const ok =
    r.mismatches === 0 &&
    r.notInChain === 0 &&
    r.missing === 0 &&
    r.unreadable === 0 &&
    r.notInImages.length === 0 &&
    r.gone.length === 0 &&
    r.goneSharedMemory.length === 0;
  if (args.json) printJson({ ok, ...r });
  const counts = (x: {
    pagesCompared: number;
    mismatches: number;
    firstMismatches: string[];
    notInChain: number;
    unreadable: number;
    missing: number;
  }): string =>
    `${x.pagesCompared} pages compared, ${x.mismatches} mismatches` +
    (x.firstMismatches.length ? ` (first at ${x.firstMismatches[0]})` : '') +
    `, ${x.notInChain} not in the chain, ${x.unreadable} unreadable, ${x.missing} missing`;
  const failed = [
    ...(r.notInImages.length
      ? [`  not in the images: processes ${r.notInImages.join(', ')} of the live tree`]
      : []),
    ...(r.gone.length ? [`  gone: processes ${r.gone.join(', ')} of the images have exited`] : []),
    ...(r.goneSharedMemory.length
      ? [`  gone: shared memory ${r.goneSharedMemory.join(', ')} is mapped by no process now`]
      : []),
  ];
  if (!ok && args.json) {
    say(
      `predump: error: verify FAILED: ${r.mismatches} mismatches, ${r.notInChain} not in the ` +
        `chain, ${r.unreadable} unreadable, ${r.missing} missing` +
        (failed.length ? `; ${failed.map((l) => l.trim()).join('; ')}` : ''),
    );
  }
  inform(
    [
      `verified the tree of process ${r.root}: ${r.processes.length} process${r.processes.length === 1 ? '' : 'es'}, ` +
        `${r.sharedMemory.length} shared memory object${r.sharedMemory.length === 1 ? '' : 's'}`,
      ...r.processes.map((p) => `  process ${p.pid}: ${counts(p)}`),
      ...r.sharedMemory.map((o) => `  shmem   ${o.shmid}: ${counts(o)}`),
      ...failed,
      ...(r.rseqOnly > 0
        ? [`  rseq only ${r.rseqOnly} (pages differing only in a thread's rseq area)`]
        : []),
      ok ? 'verify ok' : 'verify FAILED',
    ].join('\n'),
  );
  return ok ? EXIT.ok : EXIT.failed;
}
