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
 * order (S+1..); the core chooses them and writes the pages images.
 */
import { join } from 'node:path';
import { encodeImage, ImageError } from './format.js';
import {
  INVENTORY_FILE,
  PAGE_SIZE,
  PRE_DUMP_IMG_VERSION,
  STATS_FILE,
  fsyncDir,
  pagemapFileName,
  pagesFileName,
  presentPages,
  sizeIfExists,
  statsToEntry,
  toSafeNumber,
  validateEntries,
  writeFileAtomic,
  type DumpStats,
  type PagemapEntry,
  type PreDumpMode,
} from './predump-dir.js';
import { encodeInventory, encodePagemapEntry, encodePagemapHead, encodeStats } from './proto.js';

export function shmemPagemapFileName(shmid: number): string {
  return `pagemap-shmem-${shmid}.img`;
}

/** One pagemap of a tree's images: a process's (by pid) or a shared object's (by shmid). */
export interface TreePagemap {
  pagesId: number;
  entries: PagemapEntry[];
}

export interface TreeImages {
  processes: (TreePagemap & { pid: number })[];
  shmem: (TreePagemap & { shmid: number })[];
  stats: DumpStats;
  inventory: { dumpUptime: bigint | number; preDumpMode: PreDumpMode };
}

function encodePagemap(p: TreePagemap): Uint8Array {
  validateEntries(p.entries);
  return encodeImage('PAGEMAP', [
    encodePagemapHead({ pagesId: p.pagesId }),
    // Both page counts, as for one process: field 5 for CRIU >= 4.0, field 2 for older readers.
    ...p.entries.map((e) =>
      encodePagemapEntry({
        vaddr: e.vaddr,
        compatNrPages: e.nrPages,
        flags: e.flags,
        nrPages: e.nrPages,
      }),
    ),
  ]);
}

/**
 * Writes every pagemap and stats-dump, then inventory.img, into `dir`, whose pages images the
 * core has written: each must hold exactly its pagemap's present pages (else EIMAGE, and
 * nothing is written).
 */
export async function writeTreeImages(dir: string, images: TreeImages): Promise<void> {
  const files: [string, Uint8Array, TreePagemap][] = [
    ...images.shmem.map((s): [string, Uint8Array, TreePagemap] => [
      shmemPagemapFileName(s.shmid),
      encodePagemap(s),
      s,
    ]),
    ...images.processes.map((p): [string, Uint8Array, TreePagemap] => [
      pagemapFileName(p.pid),
      encodePagemap(p),
      p,
    ]),
  ];
  const ids = new Set(files.map((f) => f[2].pagesId));
  if (ids.size !== files.length) {
    throw new RangeError('every pagemap of a tree needs its own pages id');
  }
  for (const [name, , p] of files) {
    const pages = join(dir, pagesFileName(p.pagesId));
    const bytes = (await sizeIfExists(pages)) ?? 0;
    const expected = presentPages(p.entries) * PAGE_SIZE;
    if (bytes !== expected) {
      throw new ImageError(
        pages,
        `holds ${bytes} bytes, but ${name} lists ${presentPages(p.entries)} present pages (${expected} bytes)`,
      );
    }
  }
  const statsDump = encodeImage('STATS', [encodeStats({ dump: statsToEntry(images.stats) })]);
  const inventoryImg = encodeImage('INVENTORY', [
    encodeInventory({
      imgVersion: PRE_DUMP_IMG_VERSION,
      dumpUptime: toSafeNumber('dumpUptime', images.inventory.dumpUptime),
      preDumpMode: images.inventory.preDumpMode,
      plugins: [],
    }),
  ]);
  for (const [name, data] of files) await writeFileAtomic(dir, name, data);
  await writeFileAtomic(dir, STATS_FILE, statsDump);
  await fsyncDir(dir); // the renames above are durable before inventory.img can appear
  await writeFileAtomic(dir, INVENTORY_FILE, inventoryImg);
  await fsyncDir(dir);
}
