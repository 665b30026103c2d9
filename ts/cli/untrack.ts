/**
 * `predump untrack -t PID`: end predump's dirty tracking of a process.
 */
import type { Argv } from 'yargs';
import { checkTree, exitStatusHelp, STATUS, treeOption } from './options.js';
import { EXIT, fromNative } from '../errors.js';
import type { CommandSpec } from './fast-args.js';
import { inform, printJson, reportError, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

const options = {
  tree: {
    ...treeOption,
    describe:
      'pid of the process, with its descendants (each briefly frozen while the fds are closed)',
  },
  json: { type: 'boolean', default: false, describe: 'print the result as JSON' },
} as const;

export const spec: CommandSpec = { options, check: checkTree };

export function builder(yargs: Argv) {
  return yargs
    .options(options)
    .check(checkTree)
    .epilogue(
      exitStatusHelp([
        ['0', 'the tracking ended, or there was none'],
        ['1', 'it could not be ended (the message says why)'],
        STATUS.usage,
      ]),
    )
    .example('predump untrack -t 4242', 'after the last pre-dump of a chain')
    .example(
      'predump untrack -t 4242 && criu dump -t 4242 -D /tmp/final',
      'hand a process tracked with uffd-wp over to CRIU (a full dump)',
    );
}

export async function handler(args: Args): Promise<void> {
  try {
    const { listTree, isTree, untrackTree } = await import('../tree.js');
    if (isTree(await listTree(args.tree))) {
      // -t is the tree: every process of it.
      const done = await untrackTree(args.tree);
      const had = done.some((p) => p.untracked);
      if (args.json) printJson({ ok: true, pid: args.tree, untracked: had, processes: done });
      for (const p of done) {
        if (p.leftoversRemoved) {
          inform(
            `process ${p.pid}: removed ${p.leftoversRemoved} that a predump which died while injecting had left`,
          );
        }
        if (p.untracked) inform(`process ${p.pid}: dirty tracking ended, its userfaultfd closed`);
      }
      inform(
        `the tree of ${args.tree} (${done.length} processes): ` +
          (had ? 'nothing of predump is left in it' : "no process had dirty tracking of predump's"),
      );
      process.exitCode = EXIT.ok;
      return;
    }
    const { native } = await import('../native.js');
    const report = await native.untrack(args.tree).catch((err: unknown) => {
      throw fromNative(err);
    });
    const had = report.untracked;
    const leftovers = report.leftoversRemoved ?? null;
    if (args.json)
      printJson({ ok: true, pid: args.tree, untracked: had, leftoversRemoved: leftovers });
    if (leftovers) {
      inform(
        `process ${args.tree}: removed ${leftovers} that a predump which died while injecting had left`,
      );
    }
    inform(
      had
        ? `process ${args.tree}: dirty tracking ended, its userfaultfd closed`
        : `process ${args.tree} had no dirty tracking of predump's`,
    );
    process.exitCode = EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}
