/**
 * The image set of one pre-dump directory, as CRIU 4.2's `criu pre-dump` leaves it:
 *
 *   pages-ID.img      raw pages of the PE_PRESENT entries, in pagemap order
 *   pagemap-PID.img   pagemap_head{pages_id}, then one pagemap_entry per run of pages
 *                     (a pre-dump has the Rust core write both: the owner of the pair)
 *   stats-dump        stats_entry{dump}
 *   inventory.img     inventory_entry{img_version 0, dump_uptime, pre_dump_mode, plugins {}}
 *   parent            optional relative symlink to the previous pre-dump directory
 *
 * inventory.img is written last: a directory without it is incomplete. Every file is written
 * under a temporary name, fsync'ed, made 0600 and renamed, so a final name never holds a
 * half-written file.
 */
import { lstat, open, readdir, readFile, readlink, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { randomHex } from '../random.js';
import {
  imageFile,
  INVENTORY_FILE,
  pagemapFileName,
  pagesFileName,
  PARENT_LINK,
  STATS_FILE,
  tempFileName,
} from './names.js';

import {
  decodeImage,
  encodeImage,
  ImageError,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  type ImageKind,
} from './format.js';
import {
  decodeInventory,
  decodePagemapEntry,
  decodePagemapHead,
  decodeStats,
  encodeInventory,
  encodePagemapEntry,
  encodePagemapHead,
  encodeStats,
  type DumpStatsEntry,
} from './proto.js';

export {
  INVENTORY_FILE,
  pagemapFileName,
  pagesFileName,
  PARENT_LINK,
  STATS_FILE,
  TRACK_FILE,
} from './names.js';

export const PAGE_SIZE = 4096;
/** CRIU's pre-dump leaves inventory_entry.img_version unset: 0 (a full dump writes 2). */
export const PRE_DUMP_IMG_VERSION = 0;

export const PRE_DUMP_MODE = { splice: 1, read: 2 } as const;
export type PreDumpMode = (typeof PRE_DUMP_MODE)[keyof typeof PRE_DUMP_MODE];

/** A run of `nrPages` pages at `vaddr`; flags = PE_* bits. */
export interface PagemapEntry {
  vaddr: number;
  nrPages: number;
  flags: number;
}

/** dump_stats_entry; times in µs. Optional fields absent here are absent in the image. */
export interface DumpStats {
  freezingTime: number;
  frozenTime: number;
  memdumpTime: number;
  memwriteTime: number;
  pagesScanned: number;
  pagesSkippedParent: number;
  pagesWritten: number;
  /** Required on the wire (written as 0 when undefined). */
  pagesLazy?: number;
  pagePipes?: number;
  pagePipeBufs?: number;
  irmapResolve?: number;
  shpagesScanned?: number;
  shpagesSkippedParent?: number;
  shpagesWritten?: number;
}

export interface PreDumpImages {
  pid: number;
  pagesId: number;
  entries: PagemapEntry[];
  stats: DumpStats;
  inventory: {
    /** µs since boot, as CRIU (it reads /proc/uptime: 10 ms resolution). */
    dumpUptime: bigint | number;
    preDumpMode: PreDumpMode;
  };
}

export interface PreDumpInventory {
  imgVersion: number;
  dumpUptime?: number;
  /** Absent in the inventory of a full dump. */
  preDumpMode?: PreDumpMode;
}

export interface PreDumpDir {
  /** inventory.img exists. */
  complete: boolean;
  inventory?: PreDumpInventory;
  pid?: number;
  pagesId?: number;
  entries: PagemapEntry[];
  stats?: DumpStats;
  /** Size of pages-ID.img, if it exists. */
  pagesFileBytes?: number;
  /** Target of the `parent` symlink, as stored (usually relative to the directory). */
  parent?: string;
  /** A process tree's directory (several pagemaps): the processes it holds. */
  pids?: number[];
}

export interface PageSizeOption {
  /** Page size of the dumped process (default 4096). */
  pageSize?: number;
}

/** The process, or the processes of a tree, a directory holds images of (for messages). */
export function whoseImages(d: PreDumpDir): string {
  return d.pids ? `processes ${d.pids.join(', ')}` : `process ${d.pid ?? '?'}`;
}

/** Number of pages the entries put in the pages file (those with PE_PRESENT). */
export function presentPages(entries: readonly PagemapEntry[]): number {
  return entries.reduce((n, e) => ((e.flags & PE_PRESENT) !== 0 ? n + e.nrPages : n), 0);
}

/**
 * Throws a RangeError naming the first bad entry: entries must be page-aligned, non-empty,
 * sorted by vaddr and non-overlapping, with known flags and not both PE_PARENT and PE_PRESENT.
 */
export function validateEntries(entries: readonly PagemapEntry[], pageSize = PAGE_SIZE): void {
  let prevEnd = 0;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (!Number.isSafeInteger(e.vaddr) || e.vaddr < 0 || e.vaddr % pageSize !== 0) {
      throw badEntry(e, i, ': vaddr must be a page-aligned address');
    }
    if (!Number.isSafeInteger(e.nrPages) || e.nrPages <= 0) {
      throw badEntry(e, i, ': nrPages must be a positive integer');
    }
    if ((e.flags & ~(PE_PARENT | PE_LAZY | PE_PRESENT)) !== 0 || e.flags === 0) {
      throw badEntry(e, i, `: flags ${e.flags} are not a combination of PE_* bits`);
    }
    if ((e.flags & PE_PARENT) !== 0 && (e.flags & PE_PRESENT) !== 0) {
      throw badEntry(e, i, ': PE_PARENT and PE_PRESENT exclude each other');
    }
    const end = e.vaddr + e.nrPages * pageSize;
    if (!Number.isSafeInteger(end)) throw badEntry(e, i, ': end address overflows');
    if (i > 0 && e.vaddr < prevEnd) {
      const how = e.vaddr < entries[i - 1]!.vaddr ? 'is not sorted by vaddr' : 'overlaps';
      throw badEntry(
        e,
        i,
        ` ${how}: the previous entry ends at 0x${prevEnd.toString(16)} (entries must be sorted and non-overlapping)`,
      );
    }
    prevEnd = end;
  }
}

/** The error for a bad entry: built only then (a pre-dump has tens of thousands of good ones). */
function badEntry(e: PagemapEntry, i: number, why: string): RangeError {
  return new RangeError(
    `pagemap entry ${i} (vaddr 0x${e.vaddr.toString(16)}, ${e.nrPages} pages)${why}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Writing

export function toSafeNumber(name: string, v: bigint | number): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (!Number.isSafeInteger(n) || n < 0 || (typeof v === 'bigint' && BigInt(n) !== v)) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${v}`);
  }
  return n;
}

export function statsToEntry(s: DumpStats): DumpStatsEntry {
  const { pagesLazy, ...rest } = s;
  return { ...rest, pagesLazy: pagesLazy ?? 0 };
}

/** Writes `data` to dir/name through a temporary name: mode 0600, fsync'ed, then renamed. */
export async function writeFileAtomic(dir: string, name: string, data: Uint8Array): Promise<void> {
  const tmp = join(dir, tempFileName(name, `${process.pid}-${randomHex(4)}`));
  const fh = await open(tmp, 'wx', 0o600);
  try {
    try {
      await fh.chmod(0o600); // whatever the umask
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(dir, name));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function sizeIfExists(path: string): Promise<number | undefined> {
  try {
    return (await lstat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** stats-dump and inventory.img of a pre-dump, encoded: a bad value throws before any write. */
function encodeStatsAndInventory(images: Pick<PreDumpImages, 'stats' | 'inventory'>): {
  statsDump: Uint8Array;
  inventoryImg: Uint8Array;
} {
  const { stats, inventory } = images;
  if (
    inventory.preDumpMode !== PRE_DUMP_MODE.splice &&
    inventory.preDumpMode !== PRE_DUMP_MODE.read
  ) {
    throw new RangeError(
      `preDumpMode must be 1 (splice) or 2 (read), got ${inventory.preDumpMode}`,
    );
  }
  return {
    statsDump: encodeImage('STATS', [encodeStats({ dump: statsToEntry(stats) })]),
    inventoryImg: encodeImage('INVENTORY', [
      encodeInventory({
        imgVersion: PRE_DUMP_IMG_VERSION,
        dumpUptime: toSafeNumber('dumpUptime', inventory.dumpUptime),
        preDumpMode: inventory.preDumpMode,
        plugins: [],
      }),
    ]),
  };
}

async function refuseComplete(dir: string): Promise<void> {
  if ((await sizeIfExists(join(dir, INVENTORY_FILE))) !== undefined) {
    const err: NodeJS.ErrnoException = new Error(
      `${join(dir, INVENTORY_FILE)} already exists: write a pre-dump into a fresh directory`,
    );
    err.code = 'EEXIST';
    throw err;
  }
}

/**
 * Writes stats-dump, then inventory.img, which marks the directory complete: what a pre-dump
 * writes here once the core has written the pages images and their pagemaps (it owns each pair),
 * or once they went to a page server (what CRIU's client keeps locally). The directory is synced
 * before inventory.img appears, so the renames of every image before it are durable by then.
 * Refuses a directory that already has an inventory.img (code 'EEXIST').
 */
export async function writeStatsAndInventory(
  dir: string,
  images: Pick<PreDumpImages, 'stats' | 'inventory'>,
): Promise<void> {
  const { statsDump, inventoryImg } = encodeStatsAndInventory(images);
  await refuseComplete(dir);
  await writeFileAtomic(dir, STATS_FILE, statsDump);
  await fsyncDir(dir); // the renames so far are durable before inventory.img can appear
  await writeFileAtomic(dir, INVENTORY_FILE, inventoryImg);
  await fsyncDir(dir);
}

/**
 * Writes pagemap-PID.img and stats-dump, then inventory.img, into `dir` (which must exist): a
 * whole pre-dump's images from a pagemap given here (a pre-dump of a process has the core write
 * its pagemap, and uses `writeStatsAndInventory`). Refuses a directory that already has an
 * inventory.img (code 'EEXIST'). If pages-ID.img is already there, its size must match the
 * present pages (else EIMAGE, and nothing is written).
 */
export async function writePreDumpImages(
  dir: string,
  images: PreDumpImages,
  options: PageSizeOption = {},
): Promise<void> {
  const pageSize = options.pageSize ?? PAGE_SIZE;
  const { pid, pagesId, entries } = images;
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffff_ffff) {
    throw new RangeError(`pid must be a positive integer, got ${pid}`);
  }
  if (!Number.isInteger(pagesId) || pagesId < 0 || pagesId > 0xffff_ffff) {
    throw new RangeError(`pagesId must be a uint32, got ${pagesId}`);
  }
  validateEntries(entries, pageSize);
  for (const e of entries) {
    if (e.nrPages > 0xffff_ffff) {
      throw new RangeError(
        `pagemap entry at 0x${e.vaddr.toString(16)}: split it, ${e.nrPages} pages do not fit compat_nr_pages`,
      );
    }
  }

  // Encode everything before touching the directory: a bad value fails with nothing written.
  const pagemap = encodeImage('PAGEMAP', [
    encodePagemapHead({ pagesId }),
    // Both page counts: field 5 for CRIU >= 4.0, field 2 for older readers (crit 3.17).
    ...entries.map((e) =>
      encodePagemapEntry({
        vaddr: e.vaddr,
        compatNrPages: e.nrPages,
        flags: e.flags,
        nrPages: e.nrPages,
      }),
    ),
  ]);
  encodeStatsAndInventory(images);

  await refuseComplete(dir);
  const pagesName = pagesFileName(pagesId);
  const pagesBytes = await sizeIfExists(join(dir, pagesName));
  const expected = presentPages(entries) * pageSize;
  if (pagesBytes !== undefined && pagesBytes !== expected) {
    throw new ImageError(
      join(dir, pagesName),
      `holds ${pagesBytes} bytes, but the pagemap lists ${presentPages(entries)} present pages (${expected} bytes)`,
    );
  }
  await writeFileAtomic(dir, pagemapFileName(pid), pagemap);
  await writeStatsAndInventory(dir, images);
}

// ---------------------------------------------------------------------------------------------
// Reading

async function readImage(path: string, kind: ImageKind): Promise<Uint8Array[]> {
  return decodeImage(await readFile(path), path, kind).records;
}

/** Runs a protobuf decode, turning its errors into an ImageError naming the file and record. */
function record<T>(file: string, index: number, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new ImageError(file, `record ${index}: ${msg}`, { cause: err });
  }
}

/**
 * CRIU's compatibility rules for entries written by older versions (criu/pagemap.c,
 * init_compat_pagemap_entry): in_parent adds PE_PARENT; otherwise missing flags mean PE_PRESENT.
 */
function entryFromRecord(r: ReturnType<typeof decodePagemapEntry>): PagemapEntry {
  const flags = r.inParent === true ? (r.flags ?? 0) | PE_PARENT : (r.flags ?? PE_PRESENT);
  // CRIU >= 4.0 writes the count in field 5 and leaves field 2 at 0.
  return { vaddr: r.vaddr, nrPages: r.nrPages ?? r.compatNrPages, flags };
}

/** One directory of a chain, as `readChain` reads it. */
export interface ChainLink {
  /** Its absolute path. */
  dir: string;
  images: PreDumpDir;
}

/**
 * The chain ending at `dir`, newest first: each directory read with `readPreDumpDir(dir,
 * { inTree: pid })` and followed to its parent, as CRIU's restore follows the parent links,
 * up to the first that is missing, unreadable or incomplete (what follows it holds nothing
 * the chain can use), or one seen already.
 */
export async function readChain(dir: string, pid: number): Promise<ChainLink[]> {
  const chain: ChainLink[] = [];
  const seen = new Set<string>();
  for (let at: string | undefined = resolve(dir); at !== undefined && !seen.has(at);) {
    seen.add(at);
    const images: PreDumpDir | undefined = await readPreDumpDir(at, { inTree: pid }).catch(
      () => undefined,
    );
    if (!images?.complete) break;
    chain.push({ dir: at, images });
    at = images.parent === undefined ? undefined : resolve(at, images.parent);
  }
  return chain;
}

/**
 * Reads the images of one pre-dump directory. A directory without inventory.img is reported
 * with complete: false and whatever final-named images it holds. Throws an ImageError (code
 * 'EIMAGE') for a corrupt image, more than one pagemap, or — in a complete directory — a
 * missing pagemap or a pages file whose size does not match the present pages.
 */
export async function readPreDumpDir(
  dir: string,
  options: PageSizeOption & {
    /**
     * The process to read, in a directory of a process tree (one pagemap per process):
     * its pagemap-PID.img alone is read (a complete directory without it is an EIMAGE).
     */
    pid?: number;
    /**
     * The process to read if the directory is a process tree's (several pagemaps): its
     * pagemap alone is read, and a tree without it reads as holding no pagemap, `pids`
     * saying whose it holds. A directory of one process is read whatever its pid (the
     * caller compares `pid`). For a chain that went from one process to its tree (a child
     * appeared) and back (it exited).
     */
    inTree?: number;
    /**
     * The pagemaps went to a page server (predump's record says so): a complete directory
     * without one is what CRIU's client keeps locally, not an error.
     */
    pagesElsewhere?: boolean;
  } = {},
): Promise<PreDumpDir> {
  const pageSize = options.pageSize ?? PAGE_SIZE;
  const names = await readdir(dir);
  const complete = names.includes(INVENTORY_FILE);
  const result: PreDumpDir = { complete, entries: [] };

  if (complete) {
    const file = join(dir, INVENTORY_FILE);
    const recs = await readImage(file, 'INVENTORY');
    if (recs.length !== 1) throw new ImageError(file, `expected 1 record, found ${recs.length}`);
    const inv = record(file, 0, () => decodeInventory(recs[0]!));
    const out: PreDumpInventory = { imgVersion: inv.imgVersion };
    if (inv.dumpUptime !== undefined) out.dumpUptime = inv.dumpUptime;
    if (inv.preDumpMode !== undefined) {
      if (inv.preDumpMode !== PRE_DUMP_MODE.splice && inv.preDumpMode !== PRE_DUMP_MODE.read) {
        throw new ImageError(
          file,
          `pre_dump_mode ${inv.preDumpMode} is neither 1 (splice) nor 2 (read)`,
        );
      }
      out.preDumpMode = inv.preDumpMode;
    }
    result.inventory = out;
  }

  const all = names.filter((n) => imageFile(n)?.kind === 'pagemap').sort();
  const only =
    options.pid ?? (options.inTree !== undefined && all.length > 1 ? options.inTree : undefined);
  const pagemaps = all.filter((n) => only === undefined || n === pagemapFileName(only));
  if (all.length > 1) {
    result.pids = all.flatMap((n) => {
      const f = imageFile(n);
      return f?.kind === 'pagemap' ? [f.pid] : [];
    });
  }
  if (pagemaps.length > 1) {
    throw new ImageError(
      dir,
      `${pagemaps.length} pagemap images (${pagemaps.join(', ')}); expected exactly one`,
    );
  }
  const pagemapName = pagemaps[0];
  if (pagemapName === undefined) {
    // inTree: a tree's directory without that process; the caller says whose it holds.
    const notInTree = options.pid === undefined && result.pids !== undefined;
    if (complete && !options.pagesElsewhere && !notInTree) {
      throw new ImageError(
        dir,
        `has ${INVENTORY_FILE} but no ${options.pid === undefined ? 'pagemap-PID.img' : pagemapFileName(options.pid)}`,
      );
    }
  } else {
    const file = join(dir, pagemapName);
    const recs = await readImage(file, 'PAGEMAP');
    if (recs.length === 0) throw new ImageError(file, 'no pagemap_head record');
    const named = imageFile(pagemapName);
    if (named?.kind === 'pagemap') result.pid = named.pid;
    result.pagesId = record(file, 0, () => decodePagemapHead(recs[0]!)).pagesId;
    result.entries = recs
      .slice(1)
      .map((r, i) => entryFromRecord(record(file, i + 1, () => decodePagemapEntry(r))));
    try {
      validateEntries(result.entries, pageSize);
    } catch (err) {
      throw new ImageError(file, (err as Error).message, { cause: err });
    }

    const pagesName = pagesFileName(result.pagesId);
    const pagesPath = join(dir, pagesName);
    const bytes = await sizeIfExists(pagesPath);
    const present = presentPages(result.entries);
    if (bytes !== undefined) result.pagesFileBytes = bytes;
    if (complete && bytes === undefined && present > 0) {
      throw new ImageError(pagesPath, `missing, but ${pagemapName} lists ${present} present pages`);
    }
    if (complete && bytes !== undefined && bytes !== present * pageSize) {
      throw new ImageError(
        pagesPath,
        `size mismatch: ${bytes} bytes, but ${pagemapName} lists ${present} present pages × ${pageSize} = ${present * pageSize} bytes`,
      );
    }
  }

  if (names.includes(STATS_FILE)) {
    const file = join(dir, STATS_FILE);
    const recs = await readImage(file, 'STATS');
    if (recs.length !== 1) throw new ImageError(file, `expected 1 record, found ${recs.length}`);
    const dump = record(file, 0, () => decodeStats(recs[0]!)).dump;
    if (dump !== undefined) result.stats = dump;
  }

  if (names.includes(PARENT_LINK)) {
    try {
      result.parent = await readlink(join(dir, PARENT_LINK));
    } catch (err) {
      throw new ImageError(join(dir, PARENT_LINK), 'is not a symlink', { cause: err });
    }
  }
  return result;
}
