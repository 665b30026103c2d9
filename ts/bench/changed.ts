/**
 * Which of the pages an incremental pre-dump wrote had really changed: each page a
 * process's pagemap holds itself (PE_PRESENT) is compared with the copy the chain behind
 * it holds (found as CRIU's restore finds it: a PE_PARENT entry leads one directory
 * further back; a page no entry covers is not in the chain).
 *
 * It measures dirty tracking from outside: a page whose bytes differ from the chain's copy,
 * or that the chain lacks, was written by the process (or is new to it), whatever the
 * tracking said; one whose bytes are the same is a page the tracking called dirty that
 * the process did not change (or rewrote with the same bytes). So `changed + added` is a
 * lower bound of the pages the process dirtied, its stacks and heap included, which the
 * bench's own count (the pages its `dirty` commands wrote) leaves out.
 */
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import {
  PAGE_SIZE,
  PE_PARENT,
  PE_PRESENT,
  pagesFileName,
  readChain,
  type ChainLink,
  type PagemapEntry,
} from '../images/index.js';

export interface ChangedPages {
  /** Pages the newest directory holds itself (written by that pre-dump). */
  written: number;
  /** Of those, pages whose bytes differ from the chain's copy. */
  changed: number;
  /** Of those, pages the chain behind it does not hold (new to the process). */
  added: number;
  /** Of those, pages identical to the chain's copy. */
  same: number;
}

/** One directory's pagemap of the process, with each present run's offset in its pages file. */
interface Layer {
  runs: { start: number; end: number; flags: number; offset: number }[];
  pages?: FileHandle;
  pagesPath: string;
}

function layerOf({ dir, images: d }: ChainLink): Layer {
  let offset = 0;
  const runs = d.entries.map((e: PagemapEntry) => {
    const run = {
      start: e.vaddr,
      end: e.vaddr + e.nrPages * PAGE_SIZE,
      flags: e.flags,
      offset,
    };
    if (e.flags & PE_PRESENT) offset += e.nrPages * PAGE_SIZE;
    return run;
  });
  return { runs, pagesPath: path.join(dir, pagesFileName(d.pagesId ?? 1)) };
}

/** The run of `layer` covering `addr` (runs are sorted by address). */
function runAt(layer: Layer, addr: number): Layer['runs'][number] | undefined {
  let lo = 0;
  let hi = layer.runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = layer.runs[mid]!;
    if (addr < r.start) hi = mid;
    else if (addr >= r.end) lo = mid + 1;
    else return r;
  }
  return undefined;
}

async function readPage(layer: Layer, offset: number, into: Buffer): Promise<void> {
  layer.pages ??= await open(layer.pagesPath, 'r');
  const { bytesRead } = await layer.pages.read(into, 0, PAGE_SIZE, offset);
  if (bytesRead !== PAGE_SIZE) {
    throw new Error(`${layer.pagesPath}: short read at offset ${offset}`);
  }
}

/** Compares every page process `pid`'s pagemap in `dir` holds with the chain behind it. */
export async function changedPages(dir: string, pid: number): Promise<ChangedPages> {
  const out: ChangedPages = { written: 0, changed: 0, added: 0, same: 0 };
  // The newest directory, then the chain behind it, read as far as it goes.
  const [newest, ...chain] = (await readChain(dir, pid)).map(layerOf);
  if (!newest) return out;
  const mine = Buffer.alloc(PAGE_SIZE);
  const theirs = Buffer.alloc(PAGE_SIZE);
  try {
    for (const run of newest.runs) {
      if (!(run.flags & PE_PRESENT)) continue;
      for (let addr = run.start; addr < run.end; addr += PAGE_SIZE) {
        out.written++;
        await readPage(newest, run.offset + (addr - run.start), mine);
        let found = false;
        for (const layer of chain) {
          const r = runAt(layer, addr);
          if (!r) break; // not in the chain from here back
          if (r.flags & PE_PRESENT) {
            await readPage(layer, r.offset + (addr - r.start), theirs);
            found = true;
            break;
          }
          if (!(r.flags & PE_PARENT)) break; // a hole: no copy
        }
        if (!found) out.added++;
        else if (mine.equals(theirs)) out.same++;
        else out.changed++;
      }
    }
  } finally {
    await Promise.all([newest, ...chain].map((l) => l.pages?.close()));
  }
  return out;
}

/** The sum over processes `pids` of `changedPages(dir, pid)`. */
export async function changedPagesOfTree(dir: string, pids: number[]): Promise<ChangedPages> {
  const sum: ChangedPages = { written: 0, changed: 0, added: 0, same: 0 };
  for (const pid of pids) {
    const c = await changedPages(dir, pid);
    sum.written += c.written;
    sum.changed += c.changed;
    sum.added += c.added;
    sum.same += c.same;
  }
  return sum;
}
