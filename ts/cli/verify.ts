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
