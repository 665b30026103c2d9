/**
 * The image set of a pre-dump of a process tree, as `criu pre-dump -t ROOT` leaves it:
 *
 *   pages-ID.img               raw pages, one image per process and per shared object
 *   pagemap-PID.img            one per process: pagemap_head{pages_id}, then its entries
 *   pagemap-shmem-SHMID.img    one per anonymous shared memory object (same magic and
 *                              records as a process's pagemap; vaddr = offset in the object)
 *   stats-dump, inventory.img  one for the whole tree (inventory last)
 *
 * Ids: the shared objects first (1..S, in CRIU's shmem hash order), then the processes in tree
 * order (S+1..); the core chooses them and writes each pages image with its pagemap (the owner
 * of the pair); the pre-dump then writes stats-dump and inventory.img (`writeStatsAndInventory`).
 * This module reads such a directory.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeImage, ImageError, PE_PARENT, PE_PRESENT } from './format.js';
import { imageFile, shmemPagemapFileName } from './names.js';
import {
  PAGE_SIZE,
  pagesFileName,
  presentPages,
  readPreDumpDir,
  sizeIfExists,
  validateEntries,
  type PagemapEntry,
  type PreDumpDir,
} from './predump-dir.js';
import { decodePagemapEntry, decodePagemapHead } from './proto.js';

export { shmemPagemapFileName };

// ---------------------------------------------------------------------------------------------
// Reading

/** The pids and shmids of the pagemaps in a directory's file names. */
export function pagemapIds(names: readonly string[]): { pids: number[]; shmids: number[] } {
  const pids: number[] = [];
  const shmids: number[] = [];
  for (const name of names) {
    const f = imageFile(name);
    if (f?.kind === 'pagemap') pids.push(f.pid);
    else if (f?.kind === 'shmem-pagemap') shmids.push(f.shmid);
  }
  const ascending = (a: number, b: number): number => a - b;
  return { pids: pids.sort(ascending), shmids: shmids.sort(ascending) };
}

/** Whether a directory's files are those of a tree: several processes, or shared memory. */
export function isTreeDir(names: readonly string[]): boolean {
  const { pids, shmids } = pagemapIds(names);
  return pids.length > 1 || shmids.length > 0;
}

/** One pagemap of a tree directory, as read. */
export interface TreeDirPagemap {
  pagesId: number;
  entries: PagemapEntry[];
  pagesPresent: number;
  pagesInParent: number;
  /** Size of its pages image, if there. */
  pagesFileBytes?: number;
}

export interface TreeDir {
  dir: PreDumpDir;
  /** In pages-id order: CRIU's tree order, the root first. */
  processes: (TreeDirPagemap & { pid: number })[];
  /** In pages-id order. */
  shmem: (TreeDirPagemap & { shmid: number })[];
}

function counted(pagesId: number, entries: PagemapEntry[], bytes?: number): TreeDirPagemap {
  const sum = (bit: number): number =>
    entries.filter((e) => e.flags & bit).reduce((n, e) => n + e.nrPages, 0);
  return {
    pagesId,
    entries,
    pagesPresent: sum(PE_PRESENT),
    pagesInParent: sum(PE_PARENT),
    ...(bytes === undefined ? {} : { pagesFileBytes: bytes }),
  };
}

/**
 * Reads every pagemap of a tree's images directory (each checked as `readPreDumpDir` checks
 * one), with the directory's inventory, stats and parent link in `dir`.
 */
export async function readTreeDir(dir: string): Promise<TreeDir> {
  const { pids, shmids } = pagemapIds(await readdir(dir));
  const processes: TreeDir['processes'] = [];
  let first: PreDumpDir | undefined;
  for (const pid of pids) {
    const d = await readPreDumpDir(dir, { pid });
    first ??= d;
    processes.push({ pid, ...counted(d.pagesId ?? 0, d.entries, d.pagesFileBytes) });
  }
  const shmem: TreeDir['shmem'] = [];
  for (const shmid of shmids) {
    const file = join(dir, shmemPagemapFileName(shmid));
    const recs = decodeImage(await readFile(file), file, 'PAGEMAP').records;
    if (recs.length === 0) throw new ImageError(file, 'no pagemap_head record');
    const pagesId = decodePagemapHead(recs[0]!).pagesId;
    const entries = recs.slice(1).map((r) => {
      const e = decodePagemapEntry(r);
      return {
        vaddr: e.vaddr,
        nrPages: e.nrPages ?? e.compatNrPages,
        flags: e.flags ?? PE_PRESENT,
      };
    });
    try {
      validateEntries(entries);
    } catch (err) {
      throw new ImageError(file, (err as Error).message, { cause: err });
    }
    const bytes = await sizeIfExists(join(dir, pagesFileName(pagesId)));
    if (bytes !== undefined && bytes !== presentPages(entries) * PAGE_SIZE) {
      throw new ImageError(
        join(dir, pagesFileName(pagesId)),
        `size mismatch: ${bytes} bytes, but ${shmemPagemapFileName(shmid)} lists ${presentPages(entries)} present pages`,
      );
    }
    shmem.push({ shmid, ...counted(pagesId, entries, bytes) });
  }
  processes.sort((a, b) => a.pagesId - b.pagesId);
  shmem.sort((a, b) => a.pagesId - b.pagesId);
  return { dir: first ?? (await readPreDumpDir(dir)), processes, shmem };
}
