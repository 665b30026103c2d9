/**
 * How the CLI talks: results on stdout (JSON with --json), everything meant for a
 * person on stderr, a progress bar only on a terminal.
 */
import type { Argv, ArgumentsCamelCase } from 'yargs';
import { EXIT, PredumpError } from '../errors.js';

/** The output streams whose reader has gone away (EPIPE): nothing more is written to them. */
const gone = new Set<NodeJS.WriteStream>();

/**
 * A reader that goes away early (`predump show DIR | head`) ends the output, not the
 * command, and never with a stack trace: an EPIPE on stdout or stderr marks the stream
 * gone and is otherwise ignored. The command goes on to its end, so that a pre-dump never
 * leaves its images half-written or gives up a target in the middle, and its exit status
 * still tells what happened to the operation. Any other error of the streams is thrown.
 */
export function endQuietlyWhenReaderGoes(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      gone.add(stream);
    });
  }
}

/** Writes `text` to `stream` unless its reader has gone away. */
export function write(stream: NodeJS.WriteStream, text: string): void {
  if (!gone.has(stream)) stream.write(text);
}

/** Writes a line for a person (stderr): a warning or an error, or anything without --json. */
export function say(message: string): void {
  write(process.stderr, `${message}\n`);
}

let jsonOutput = false;

/** With --json, stderr carries only warnings and errors: `inform` and the progress bar are quiet. */
export function jsonMode(on: boolean): void {
  jsonOutput = on;
}

/** A line for a person that is neither a warning nor an error (a summary, a note): not with --json, whose result holds it. */
export function inform(message: string): void {
  if (!jsonOutput) say(message);
}

/**
 * The version of each command's JSON (its `version` field, README "JSON output"), raised
 * for that command when one of its fields changes meaning or goes away, not when one is
 * added. `dump` is at 2: its `drainMBps` was the bytes per millisecond of the fsync after
 * the thaw (the copy had happened while frozen) and is now 0, `copyMBps` giving the copy's
 * rate; and a tree dump's `drainMs` now starts at the thaw, as a single process's.
 */
export const JSON_VERSIONS = {
  'pre-dump': 1,
  dump: 2,
  'page-server': 1,
  show: 1,
  untrack: 1,
  verify: 1,
  demo: 1,
  check: 1,
  bench: 1,
} as const satisfies Record<string, number>;

/** The version of a document that names no command (a command line naming none). */
const NO_COMMAND_VERSION = 1;

/** The version of `command`'s JSON. */
export function jsonVersion(command: string | undefined): number {
  return command !== undefined && Object.hasOwn(JSON_VERSIONS, command)
    ? JSON_VERSIONS[command as keyof typeof JSON_VERSIONS]
    : NO_COMMAND_VERSION;
}

let commandName: string | undefined;

/** Names the command whose JSON is printed (its `command` field). */
export function jsonCommand(name: string): void {
  commandName = name;
}

/**
 * Writes the machine-readable result (stdout): one object, `version` and `command`
 * first, then `ok`, then the command's own fields (or `error` when `ok` is false).
 */
export function printJson(value: object): void {
  const doc = { version: jsonVersion(commandName), command: commandName, ...value };
  write(process.stdout, `${JSON.stringify(doc, null, 2)}\n`);
}

/** One object on one line, as printJson's: for a command that reports events (page-server). */
export function printJsonLine(value: object): void {
  const doc = { version: jsonVersion(commandName), command: commandName, ...value };
  write(process.stdout, `${JSON.stringify(doc)}\n`);
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function formatMs(ms: number): string {
  return ms < 10
    ? `${ms.toFixed(2)} ms`
    : ms < 10_000
      ? `${ms.toFixed(1)} ms`
      : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * A one-line progress bar on stderr, drawn only when stderr is a terminal and the
 * work has lasted long enough (half a second) to be worth watching.
 */
export class ProgressBar {
  private readonly started = performance.now();
  private drawn = false;
  private readonly enabled: boolean;

  constructor(private readonly label: string) {
    this.enabled = process.stderr.isTTY === true && !jsonOutput;
  }

  update(done: number, total: number): void {
    if (!this.enabled || total <= 0 || performance.now() - this.started < 500) return;
    const width = 30;
    const frac = Math.min(1, done / total);
    const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
    write(
      process.stderr,
      `\r${this.label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(done)} / ${formatBytes(total)}`,
    );
    this.drawn = true;
  }

  clear(): void {
    if (this.drawn) write(process.stderr, '\r\x1b[K');
    this.drawn = false;
  }
}

/** Reports a failure as the user should see it; returns the exit status. */
export function reportError(err: unknown, json: boolean): number {
  const e =
    err instanceof PredumpError
      ? err
      : new PredumpError('EINTERNAL', err instanceof Error ? err.message : String(err));
  if (json) printJson({ ok: false, error: { code: e.code, message: e.message } });
  say(`predump: error: ${e.message}`);
  if (e.code === 'EUSAGE') return EXIT.usage;
  if (e.code === 'EINTERNAL' && err instanceof Error && err.stack && process.env.PREDUMP_DEBUG) {
    say(err.stack);
  }
  return EXIT.failed;
}

/** The parsed arguments of a command, as its yargs builder declares them. */
export type ArgsOf<B extends (yargs: Argv) => Argv<unknown>> = ArgumentsCamelCase<
  ReturnType<B> extends Argv<infer T> ? T : never
>;

/**
 * Runs `op` with SIGINT and SIGTERM turned into an abort of its signal. The
 * operation gives up only once the target runs again (never while it is frozen
 * or being injected into) and removes its incomplete images; then the process
 * exits with 130 or 143. Otherwise returns `op`'s result, or the failure's exit
 * status after reporting it.
 */
export async function interruptible<T>(
  op: (signal: AbortSignal) => Promise<T>,
  json: boolean,
): Promise<{ ok: true; value: T } | { ok: false; status: number }> {
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    say(`predump: ${sig}: stopping once the target runs again`);
    abort.abort(sig);
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    return { ok: true, value: await op(abort.signal) };
  } catch (err) {
    const status = reportError(err, json);
    if (abort.signal.aborted) {
      say('predump: the target was left running; the incomplete images were removed');
      process.exit(abort.signal.reason === 'SIGINT' ? 130 : 143);
    }
    return { ok: false, status };
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}
