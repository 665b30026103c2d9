/**
 * Verifying an image chain against a live process.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fromNative, PredumpError } from './errors.js';
import {
  PE_PARENT,
  PE_PRESENT,
  pagesFileName,
  readChain,
  readPreDumpDir,
  TRACK_FILE,
  whoseImages,
} from './images/index.js';
import { native } from './native.js';

export interface VerifyResult {
  pid: number;
  imagesDir: string;
  /** The directories of the chain, newest first. */
  chain: string[];
  pagesCompared: number;
  mismatches: number;
  firstMismatches: string[];
  /** Pages of the newest pagemap that no directory of the chain holds. */
  notInChain: number;
  /** Pages the chain holds that the process can no longer read. */
  unreadable: number;
  /** Present pages of the process that the chain does not hold. */
  missing: number;
  /**
   * Pages that differ only inside a thread's rseq area, which the kernel rewrites
   * whenever the thread returns to user mode (after a freeze, after a restore).
   */
  rseqOnly: number;
}

const flat = (entries: { vaddr: number; nrPages: number }[]): Float64Array =>
  new Float64Array(entries.flatMap((e) => [e.vaddr, e.nrPages]));

/** Freezes `pid` and compares every page of the chain ending at `dir` with its memory. */
export async function verifyChain(pid: number, dir: string): Promise<VerifyResult> {
  // pages-ID.img as each pagemap names it (CRIU numbers them per dump).
  const chain: { dir: string; pagesId: number; present: Float64Array }[] = [];
  // A tree's directory holds a pagemap per process: this process's is read.
  const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    // Said as `show` says it: no such directory, or not one.
    if (err.code === 'ENOENT') throw new PredumpError('EDIR', `no such directory: ${dir}`);
    if (err.code === 'ENOTDIR') throw new PredumpError('EDIR', `${dir} is not a directory`);
    return [] as string[];
  });
  const sent = await readFile(path.join(dir, TRACK_FILE), 'utf8').then(
    (t) => (JSON.parse(t) as { pageServer?: { address: string; port: number } }).pageServer,
    () => undefined,
  );
  if (sent && !names.some((n) => n.startsWith('pagemap-'))) {
    throw new PredumpError(
      'EIMAGE',
      `${dir} holds the local half of a pre-dump sent to the page server at ` +
        `${sent.address}:${sent.port}: its pagemaps and pages are there. Verify the server's ` +
        'directory, with this inventory.img copied beside it',
    );
  }
  // Any link may be a tree's: the chain of one process may have been a tree's for a while
  // (a child that came and went).
  const newest = await readPreDumpDir(dir, { inTree: pid }).catch((err: Error) => {
    throw new PredumpError('EIMAGE', `cannot read ${dir}: ${err.message}`);
  });
  if (!newest.complete) throw new PredumpError('EIMAGE', `${dir} is incomplete (no inventory.img)`);
  if (newest.pid !== pid) {
    throw new PredumpError('EINVAL', `${dir} holds ${whoseImages(newest)}, not ${pid}`);
  }
  // What follows the chain's end holds nothing: counted as not in the chain.
  for (const { dir: at, images: d } of await readChain(dir, pid)) {
    chain.push({
      dir: at,
      pagesId: d.pagesId ?? 1,
      present: flat(d.entries.filter((e) => e.flags & PE_PRESENT)),
    });
  }
  const wanted = flat(newest.entries.filter((e) => e.flags & (PE_PRESENT | PE_PARENT)));
  const r = await native
    .verify(
      pid,
      chain.map((c) => ({
        pagesPath: path.join(c.dir, pagesFileName(c.pagesId)),
        present: c.present,
      })),
      wanted,
    )
    .catch((err: unknown) => {
      throw fromNative(err);
    });
  return {
    pid,
    imagesDir: path.resolve(dir),
    chain: chain.map((c) => c.dir),
    pagesCompared: r.pagesCompared,
    mismatches: r.mismatches,
    firstMismatches: r.firstMismatches.map((a) => `0x${a.toString(16)}`),
    notInChain: r.notInChain,
    unreadable: r.unreadable,
    missing: r.missing,
    rseqOnly: r.rseqOnly,
  };
}
