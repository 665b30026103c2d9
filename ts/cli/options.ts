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
export function checkTree(argv: { tree: number }): true {
  if (!Number.isInteger(argv.tree) || argv.tree <= 0) {
    throw new Error('-t/--tree must be a pid: a positive integer');
  }
  return true;
}
