/**
 * The predump command line. One file per command in this directory, listed in
 * commands.ts and loaded only when named.
 *
 * A well-formed command line (`predump pre-dump -t 4242 -D /tmp/img`) runs its command
 * straight from the fast path's parse (fast-args.ts); yargs, with its help, messages and
 * validation, is loaded for everything else: --help, --version, a command line with a
 * mistake in it, a command without a fast path.
 */
import { EXIT } from '../errors.js';
import { COMMANDS, nameOf, type CommandModule } from './commands.js';
import { exitStatusHelp, STATUS } from './options.js';
import { endQuietlyWhenReaderGoes, jsonCommand, jsonMode, printJson, write } from './output.js';

export async function main(argv: string[]): Promise<void> {
  endQuietlyWhenReaderGoes();
  // The command a JSON result or error is of: the first word of the line that names one.
  const word = argv.find((a) => COMMANDS.some((c) => nameOf(c) === a));
  if (word !== undefined) jsonCommand(word);
  const named = COMMANDS.find((c) => nameOf(c) === argv[0]);
  if (named) {
    const mod = await named.load();
    if (mod.spec) {
      const { parseFast } = await import('./fast-args.js');
      const args = parseFast(mod.spec, argv.slice(1));
      if (args) {
        await run(mod, args);
        return;
      }
    }
  }
  await withYargs(argv);
}

/** Runs a command's handler; with --json, stderr carries only warnings and errors. */
function run(mod: CommandModule, args: Record<string, unknown>): Promise<void> {
  jsonMode(args.json === true);
  return (mod.handler as (args: unknown) => Promise<void>)(args);
}

/** The whole command line through yargs, with the modules of the commands it names. */
async function withYargs(argv: string[]): Promise<void> {
  const { default: yargs } = await import('yargs');
  // Whichever command yargs takes is one of the words of the command line: those are
  // loaded; the others are registered by name and description only, for --help.
  const modules = new Map<string, CommandModule>();
  for (const c of COMMANDS) {
    if (argv.includes(nameOf(c))) modules.set(nameOf(c), await c.load());
  }
  let y = yargs(argv)
    // An option given twice: the last one counts, as with CRIU's getopt (yargs would
    // otherwise pass an array where one value is expected).
    .parserConfiguration({ 'duplicate-arguments-array': false })
    .scriptName('predump')
    .usage(
      'predump: CRIU-compatible memory pre-dumps of live processes\n\n' +
        "A pre-dump copies a running process's memory into CRIU image files while\n" +
        'stopping it as briefly as possible. Run as root (or as the owner with ptrace allowed).\n\n' +
        'Usage: $0 <command> [options]',
    );
  for (const c of COMMANDS) {
    const mod = modules.get(nameOf(c));
    y = mod
      ? y.command({
          command: c.command,
          describe: c.describe,
          builder: mod.builder,
          handler: (args: Record<string, unknown>) => run(mod, args),
        })
      : y.command(c.command, c.describe);
  }
  await y
    .demandCommand(1, 'Say which command to run; see the list above.')
    .strict()
    .recommendCommands()
    .help()
    .alias('help', 'h')
    .version()
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .epilogue(
      "With CRIU: where the kernel has soft-dirty (x86_64), predump's pre-dumps are continued by\n" +
        "'criu dump --track-mem --prev-images-dir ../LAST' and brought back by 'criu restore'.\n" +
        'After uffd-wp tracking (kernels without soft-dirty) the process holds a userfaultfd that\n' +
        "criu dump refuses: run 'predump untrack -t PID' first (criu then dumps everything), or\n" +
        'close the chain with \'predump dump\'. README: "Using predump with CRIU".\n\n' +
        exitStatusHelp([
          STATUS.ok,
          STATUS.failed,
          STATUS.usage,
          STATUS.partial,
          STATUS.interrupted,
        ]) +
        '\n\nA reader that goes away early (`predump show DIR | head`) ends the output quietly; ' +
        "the status is still the operation's. Each command's --help lists its own statuses.",
    )
    // Handlers report their own failures; what reaches here is a bad command line
    // (a yargs message, or an Error thrown by a command's .check()).
    .fail((msg: string | undefined, err: Error | undefined, yy) => {
      const message = msg ?? err?.message ?? 'bad command line';
      // Scripts asked for JSON: they get the error as JSON too.
      if (argv.includes('--json')) printJson({ ok: false, error: { code: 'EUSAGE', message } });
      yy.showHelp();
      write(process.stderr, `\npredump: ${message}\n`);
      process.exit(EXIT.usage);
    })
    .parseAsync();
}
