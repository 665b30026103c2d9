/**
 * The predump command line. One file per command in this directory.
 */
import yargs from 'yargs';
import { EXIT } from '../errors.js';
import { printJson } from './output.js';
import * as bench from './bench.js';
import * as check from './check.js';
import * as demo from './demo.js';
import * as dump from './dump.js';
import * as preDump from './pre-dump.js';
import * as show from './show.js';
import * as untrack from './untrack.js';
import * as verify from './verify.js';

export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName('predump')
    .usage(
      'predump: CRIU-compatible memory pre-dumps of live processes\n\n' +
        "A pre-dump copies a running process's memory into CRIU image files while\n" +
        'stopping it as briefly as possible. Run as root (or as the owner with ptrace allowed).\n\n' +
        'Usage: $0 <command> [options]',
    )
    .command(preDump)
    .command(dump)
    .command(show)
    .command(untrack)
    .command(verify)
    .command(demo)
    .command(check)
    .command(bench)
    .demandCommand(1, 'Say which command to run; see the list above.')
    .strict()
    .recommendCommands()
    .help()
    .alias('help', 'h')
    .version()
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .epilogue(
      'Exit status: 0 ok, 1 the operation failed (nothing complete was written), 2 bad command\n' +
        'line, 3 partial pre-dump (the target exited while its pages were copied).',
    )
    // Handlers report their own failures; what reaches here is a bad command line
    // (a yargs message, or an Error thrown by a command's .check()).
    .fail((msg: string | undefined, err: Error | undefined, y) => {
      const message = msg ?? err?.message ?? 'bad command line';
      // Scripts asked for JSON: they get the error as JSON too.
      if (argv.includes('--json')) printJson({ ok: false, error: { code: 'EUSAGE', message } });
      y.showHelp();
      process.stderr.write(`\npredump: ${message}\n`);
      process.exit(EXIT.usage);
    })
    .parseAsync();
}
