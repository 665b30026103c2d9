/**
 * The names of the files in an images directory: made and recognised here only
 * (no other module writes a file name pattern). No imports: the CLI's start-up
 * can check a directory without loading the image codecs.
 */

export const INVENTORY_FILE = 'inventory.img';
export const STATS_FILE = 'stats-dump';
export const PARENT_LINK = 'parent';
/** predump's own record in an images directory: which tracking run made it. */
export const TRACK_FILE = 'predump-track.json';

export function pagesFileName(pagesId: number): string {
  return `pages-${pagesId}.img`;
}

export function pagemapFileName(pid: number): string {
  return `pagemap-${pid}.img`;
}

export function shmemPagemapFileName(shmid: number): string {
  return `pagemap-shmem-${shmid}.img`;
}

/** The name of the temporary file an image is written to before its rename. */
export function tempFileName(name: string, unique: string): string {
  return `.${name}.${unique}.tmp`;
}

/** What a file of an images directory is, by its name. */
export type ImageFile =
  | { kind: 'inventory' | 'stats' | 'parent' | 'track' }
  | { kind: 'pagemap'; pid: number }
  | { kind: 'shmem-pagemap'; shmid: number }
  | { kind: 'pages'; pagesId: number }
  /** An image being written (`tempFileName`): not an image yet. */
  | { kind: 'temp' };

const NUMBERED = /^(pagemap-shmem|pagemap|pages)-(\d+)\.img$/;
const TEMP = /^\..+\.tmp$/;

/** The image file `name` names, or undefined for any other name. */
export function imageFile(name: string): ImageFile | undefined {
  switch (name) {
    case INVENTORY_FILE:
      return { kind: 'inventory' };
    case STATS_FILE:
      return { kind: 'stats' };
    case PARENT_LINK:
      return { kind: 'parent' };
    case TRACK_FILE:
      return { kind: 'track' };
  }
  if (TEMP.test(name)) return { kind: 'temp' };
  const m = NUMBERED.exec(name);
  if (m === null) return undefined;
  const id = Number(m[2]);
  switch (m[1]) {
    case 'pagemap':
      return { kind: 'pagemap', pid: id };
    case 'pagemap-shmem':
      return { kind: 'shmem-pagemap', shmid: id };
    default:
      return { kind: 'pages', pagesId: id };
  }
}
