/**
 * The start-up fast path: a plain, well-formed command line is parsed by Node's own
 * `util.parseArgs`, without loading yargs, its help and message machinery and their
 * text-width libraries (which took as long again as Node's own start-up).
 *
 * It takes only what it can prove well-formed and read exactly as yargs reads it: every
 * option declared and given once, in the plain forms (`--name value`, `--name=value`,
 * `-t value`, `--flag`), numbers in plain decimal, the required options and
 * positionals there, values among the choices, no conflicting pair, the command's own
 * check passed. Anything else (--help, --version, `--no-json`, a mistake) goes to yargs,
 * which decides and says what is wrong as it always has: the fast path never produces an
 * error of its own. `__test__/cli.test.ts` compares the two on every command.
 */
import { parseArgs } from 'node:util';
import type { Options } from 'yargs';

/** A command's options, as its yargs builder declares them and the fast path reads them. */
export interface CommandSpec {
  options: Readonly<Record<string, Options>>;
  /** Required positional arguments, in order (`show <dir>`). */
  positionals?: readonly string[];
  /** Pairs of options that cannot be given together. */
  conflicts?: readonly (readonly [string, string])[];
  /** The command's own check of the parsed arguments (yargs' .check): throws if wrong. */
  check?: (argv: Record<string, unknown>) => true;
}

const camel = (name: string): string =>
  name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

const aliasesOf = (o: Options): readonly string[] =>
  o.alias === undefined ? [] : typeof o.alias === 'string' ? [o.alias] : o.alias;

/**
 * `args` (after the command's name) as the command's handler receives them from yargs
 * (every option under its name, its camelCase name and its aliases), or undefined when
 * yargs must look at them.
 */
export function parseFast(
  spec: CommandSpec,
  args: readonly string[],
): Record<string, unknown> | undefined {
  if (args.includes('--')) return undefined;
  const entries = Object.entries(spec.options);
  const config: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, o] of entries) {
    if (o.type !== 'string' && o.type !== 'number' && o.type !== 'boolean') return undefined;
    const short = aliasesOf(o).find((a) => a.length === 1);
    config[name] = { type: o.type === 'boolean' ? 'boolean' : 'string', ...(short && { short }) };
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: config,
      strict: true,
      allowPositionals: true,
      tokens: true,
    });
  } catch {
    return undefined;
  }
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== 'option') continue;
    // Given twice: yargs makes an array of it.
    if (seen.has(token.name)) return undefined;
    seen.add(token.name);
    // `-Dd`: yargs reads two flags (-D -d) where parseArgs reads -D d; `-t4242` both read
    // alike, but not every such form: only `-t VALUE` is taken.
    if (token.inlineValue && !token.rawName.startsWith('--')) return undefined;
    // `--json false`: yargs takes the word as the flag's value, parseArgs as a positional.
    const next = args[token.index + 1];
    if (config[token.name]?.type === 'boolean' && (next === 'true' || next === 'false')) {
      return undefined;
    }
  }
  const argv: Record<string, unknown> = { _: [] };
  for (const [name, o] of entries) {
    let value: unknown = parsed.values[name];
    if (value === undefined) {
      if (o.demandOption) return undefined;
      value = o.default;
    } else if (o.type === 'number') {
      if (!/^(0|[1-9]\d{0,14})$/.test(value as string)) return undefined;
      value = Number(value);
    }
    if (value !== undefined && o.choices !== undefined && !o.choices.includes(value as string)) {
      return undefined;
    }
    for (const key of [name, ...aliasesOf(o)]) {
      argv[key] = value;
      argv[camel(key)] = value;
    }
  }
  for (const [a, b] of spec.conflicts ?? []) {
    if (argv[a] !== undefined && argv[b] !== undefined) return undefined;
  }
  const positionals = spec.positionals ?? [];
  if (parsed.positionals.length !== positionals.length) return undefined;
  positionals.forEach((name, i) => (argv[name] = parsed.positionals[i]));
  try {
    spec.check?.(argv);
  } catch {
    return undefined;
  }
  return argv;
}
