/**
 * The commands, as `predump --help` lists them. A command's module (its options, its
 * help, its handler) is loaded only when that command is named on the command line, and
 * it loads what its work needs (the addon, the image codec, the workload) only when it
 * runs: `predump show` never loads the addon, `predump pre-dump` never loads the bench.
 */
import type { Argv } from 'yargs';
import type { CommandSpec } from './fast-args.js';

/** What a command's module exports. */
export interface CommandModule {
  /** Declares the options, examples and epilogue on yargs (for --help and for errors). */
  builder(yargs: Argv): Argv<unknown>;
  handler(args: never): Promise<void>;
  /** Its options for the start-up fast path; absent: always parsed by yargs. */
  spec?: CommandSpec;
}

export interface Command {
  /** yargs' command string: the name and its positional arguments. */
  command: string;
  describe: string;
  load(): Promise<CommandModule>;
}

export const COMMANDS: readonly Command[] = [
  {
    command: 'pre-dump',
    describe: 'Copy the memory of a running process into CRIU image files',
    load: () => import('./pre-dump.js'),
  },
  {
    command: 'dump',
    describe:
      "Dump a process's memory with it frozen throughout: the consistent snapshot that closes a chain",
    load: () => import('./dump.js'),
  },
  {
    command: 'page-server',
    describe:
      'Receive the pages of a pre-dump or dump sent from another host (CRIU page-server protocol)',
    load: () => import('./page-server.js'),
  },
  {
    command: 'show <dir>',
    describe: 'Decode an images directory: entries, page counts, stats, parent',
    load: () => import('./show.js'),
  },
  {
    command: 'untrack',
    describe:
      "End predump's dirty tracking of a process: close the userfaultfd it left there (run it " +
      "before 'criu dump', which refuses a process holding a userfaultfd)",
    load: () => import('./untrack.js'),
  },
  {
    command: 'verify',
    describe: 'Freeze a process and compare every page of an image chain with its memory',
    load: () => import('./verify.js'),
  },
  {
    command: 'demo',
    describe: 'Start the bundled workload, pre-dump it, check every dumped page, and stop it',
    load: () => import('./demo.js'),
  },
  {
    command: 'check',
    describe: 'Report which kernel features predump can use here (a report: exit 0)',
    load: () => import('./check.js'),
  },
  {
    command: 'bench',
    describe:
      'Benchmark the pre-dump modes on the bundled workload, beside memcpy of the same size',
    load: () => import('./bench.js'),
  },
];

/** The name a command is called by (`show` of `show <dir>`). */
export const nameOf = (c: Command): string => c.command.split(' ')[0]!;
