/**
 * `predump verify -t PID -D DIR`: compare an image chain with the live memory.
 */
import type { Argv } from 'yargs';
import { checkTree, treeOption } from './options.js';
import { EXIT } from '../errors.js';
import { verifyChain } from '../verify.js';
import { printJson, reportError, say, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'verify';
export const describe = 'Freeze a process and compare every page of an image chain with its memory';

export function builder(yargs: Argv) {
  return yargs
    .option('tree', { ...treeOption, describe: 'pid of the process' })
    .option('images-dir', {
      alias: 'D',
      type: 'string',
      demandOption: true,
      describe: "the newest images of the chain (its 'parent' links are followed)",
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
    .check(checkTree)
    .example('predump verify -t 4242 -D /tmp/final', 'zero mismatches right after a dump')
    .epilogue('Exit status 0 when every page matches and none is missing, 1 otherwise.');
}

export async function handler(args: Args): Promise<void> {
  try {
    const r = await verifyChain(args.tree, args.imagesDir);
    const ok = r.mismatches === 0 && r.notInChain === 0 && r.missing === 0 && r.unreadable === 0;
    if (args.json) printJson({ ok, ...r });
    say(
      [
        `verified process ${r.pid} against ${r.chain.length} image director${r.chain.length === 1 ? 'y' : 'ies'}`,
        `  pages compared   ${r.pagesCompared}`,
        `  mismatches       ${r.mismatches}${r.firstMismatches.length ? ` (first at ${r.firstMismatches[0]})` : ''}`,
        `  not in the chain ${r.notInChain}`,
        `  unreadable now   ${r.unreadable}`,
        `  missing          ${r.missing} present pages the images do not hold`,
        ok ? 'verify ok' : 'verify FAILED',
      ].join('\n'),
    );
    process.exitCode = ok ? EXIT.ok : EXIT.failed;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}
