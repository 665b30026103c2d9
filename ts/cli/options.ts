/**
 * Options shared by the commands, with CRIU's names.
 */

/** `-t/--tree PID`: the target process. */
export const treeOption = { alias: 't', type: 'number', demandOption: true } as const;

/** `-D/--images-dir DIR`: where the images go. */
export const imagesDirOption = {
  alias: 'D',
  type: 'string',
  demandOption: true,
  describe: 'directory for the images: created 0700 if missing, must hold no images',
} as const;

/** yargs parses `-t abc` as NaN: a usage error, not a failure of the command. */
export function checkTree(argv: { tree?: unknown }): true {
  if (!Number.isInteger(argv.tree) || (argv.tree as number) <= 0) {
    throw new Error('-t/--tree must be a pid: a positive integer');
  }
  return true;
}

/** One row of the exit statuses a command's --help lists: status, meaning. */
export type StatusRow = readonly [status: string, meaning: string];

export const STATUS = {
  ok: ['0', 'done'],
  failed: ['1', 'the operation failed; nothing complete was written (the message says why)'],
  usage: ['2', 'the command line is wrong (nothing was done)'],
  partial: ['3', 'partial pre-dump: the target exited while its pages were copied'],
  interrupted: [
    '130, 143',
    'interrupted by SIGINT / SIGTERM: the target runs on, the incomplete images are removed',
  ],
} as const satisfies Record<string, StatusRow>;

/** The "Exit status" part of a --help, one status a line. */
export function exitStatusHelp(rows: readonly StatusRow[]): string {
  return ['Exit status:', ...rows.map(([s, m]) => `  ${s.padEnd(9)}${m}`)].join('\n');
}
