/**
 * `predump untrack -t PID`: end predump's dirty tracking of a process.
 */
import type { Argv } from 'yargs';
import { checkTree, treeOption } from './options.js';
import { EXIT, fromNative } from '../errors.js';
import { native } from '../native.js';
import { printJson, reportError, say, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'untrack';
export const describe =
  "End predump's dirty tracking of a process: close the userfaultfd it left there";

export function builder(yargs: Argv) {
  return yargs
    .option('tree', {
      ...treeOption,
      describe: 'pid of the process (briefly frozen while the fds are closed)',
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
    .check(checkTree)
    .example('predump untrack -t 4242', 'after the last pre-dump of a chain');
}

export async function handler(args: Args): Promise<void> {
  try {
    const had = await native.untrack(args.tree).catch((err: unknown) => {
      throw fromNative(err);
    });
    if (args.json) printJson({ ok: true, pid: args.tree, untracked: had });
    say(
      had
        ? `process ${args.tree}: dirty tracking ended, its userfaultfd closed`
        : `process ${args.tree} had no dirty tracking of predump's`,
    );
    process.exitCode = EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}
