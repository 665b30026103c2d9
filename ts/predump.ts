/**
 * A pre-dump, from the caller's options to a complete image directory:
 * the Rust core freezes, scans, thaws and drains the pages into pages-1.img;
 * this side lays out the CRIU images around it (pagemap, stats, inventory last).
 */
import { fromNative, PredumpError } from './errors.js';
import { discardImages, openImagesDir } from './images-dir.js';
import {
  PARENT_LINK,
  PE_PARENT,
  PE_PRESENT,
  PRE_DUMP_MODE,
  pagesFileName,
  writePreDumpImages,
  type PagemapEntry,
} from './images/index.js';
import { native } from './native.js';
import { randomBytes } from 'node:crypto';
import { symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { openParent, TRACK_FILE, type TrackRecord } from './parent.js';

/** The ways pages are drained (see `PreDumpOptions.mode`). */
export type PreDumpModeName = 'read' | 'splice' | 'freeze-free';
/** A mode, or 'auto': freeze-free where uffd-wp tracking is used, else read. */
export type PreDumpMode = PreDumpModeName | 'auto';
export type TrackMem = 'auto' | 'uffd-wp' | 'soft-dirty' | 'none';

export interface PreDumpOptions {
  /** The process to pre-dump. */
  pid: number;
  /** Where the images go: created 0700 if missing; must hold no images. */
  imagesDir: string;
  /**
   * How pages are drained:
   * - 'read' finds them while frozen and copies them with process_vm_readv after thaw;
   * - 'splice' references them into pipes while frozen (CRIU's default), falling
   *   back to read mode where vmsplice is refused;
   * - 'freeze-free' (uffd-wp tracking only) takes and re-arms the written pages
   *   while the target runs, then copies them: the target is never stopped, but
   *   for one short stop on the first run (docs/FREEZE-FREE.md);
   * - 'auto' (default): freeze-free where uffd-wp tracking is in use, else read.
   */
  mode?: PreDumpMode;
  /**
   * Dirty tracking, so that a later pre-dump with this one as its parent copies
   * only what changed: 'auto' (default) picks soft-dirty where the kernel has it
   * (nothing is left in the target), else uffd-wp (a userfaultfd and a marker fd
   * stay in the target until `dump` or `untrack`), else none; 'none' tracks
   * nothing: every pre-dump is a full one.
   */
  trackMem?: TrackMem;
  /** The previous pre-dump of the same process: pages it holds that did not change are not copied again. */
  prevImagesDir?: string;
  /**
   * A final dump instead of a pre-dump (`predump dump`): the pages are copied
   * while the target stays frozen throughout (a consistent snapshot), dirty
   * tracking is ended, and the target is left running, or job-stopped with
   * `leaveStopped` (as by SIGSTOP, untraced).
   */
  finalDump?: boolean;
  leaveStopped?: boolean;
  /** Size of each drain buffer in bytes (default 4 MiB, rounded to the pipe size). */
  bufferBytes?: number;
  /** Called about every 100 ms while pages are copied. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /**
   * Aborting removes the incomplete images and rejects with EINTERRUPTED. The
   * copy itself goes on in its thread until the process exits; the target runs
   * from the moment it is thawed (and a process that exits while it holds the
   * target frozen has it thawed by the kernel).
   */
  signal?: AbortSignal;
}

/** What a pre-dump did. Times in milliseconds. */
export interface PreDumpResult {
  pid: number;
  imagesDir: string;
  /** The mode used ('read' after a fallback). */
  mode: PreDumpModeName;
  requestedMode: PreDumpMode;
  /** Why splice or freeze-free mode fell back to read mode. */
  fallback: string | null;
  /** Splice mode: pipes used and the bytes of the target pinned in them until drained. */
  pipes: number;
  pinnedBytes: number;
  /** Splice mode: system calls run inside the frozen target, and their time. */
  injectedCalls: number;
  injectMs: number;
  /** The target exited while its pages were copied: the images hold only what was read. */
  partial: boolean;
  threads: number;
  /** How present pages were found: PAGEMAP_SCAN or pagemap. */
  scanMethod: string;
  pagemapEntries: number;
  pagesScanned: number;
  /** Present pages found while frozen. */
  pagesPresent: number;
  pagesWritten: number;
  /** Pages that were unmapped or made unreadable between the scan and the copy. */
  pagesGone: number;
  /** Present pages left to the parent images (PE_PARENT entries). */
  pagesSkippedParent: number;
  /** The tracking asked for, and the one used ('auto' resolved). */
  trackMem: TrackMem;
  trackBackend: 'uffd-wp' | 'soft-dirty' | 'none';
  parent: string | null;
  /** Why a pre-dump with a parent still copied every page. */
  trackNote: string | null;
  bytesWritten: number;
  /** Time to stop every thread. */
  freezingMs: number;
  /** Time every thread was stopped (CRIU's frozen_time). */
  frozenMs: number;
  /** Time any thread was stopped: freezing plus frozen. */
  stoppedWindowMs: number;
  scanMs: number;
  /** From thaw until the pages image is on disk. */
  drainMs: number;
  totalMs: number;
  /** Pages copied per second of drain, in MB/s (10^6 bytes). */
  drainMBps: number;
  bufferBytes: number;
  readvCalls: number;
  /** Peak resident memory of this process so far (the tool's own footprint). */
  peakRssBytes: number;
}

const PAGE = 4096;

/** Pre-dumps a live process into a new CRIU image directory. */
export async function preDump(options: PreDumpOptions): Promise<PreDumpResult> {
  const mode = options.mode ?? 'auto';
  if (options.finalDump && mode !== 'read' && mode !== 'auto') {
    throw new PredumpError(
      'EINVAL',
      `a final dump copies while frozen throughout: it has no ${mode} mode`,
    );
  }
  if (!['auto', 'read', 'splice', 'freeze-free'].includes(mode)) {
    throw new PredumpError(
      'EINVAL',
      `unknown pre-dump mode '${String(mode)}': use auto, read, splice or freeze-free`,
    );
  }
  const { pid } = options;
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new PredumpError('EINVAL', `pid must be a positive integer, got ${pid}`);
  }
  const started = performance.now();
  // A target that cannot be pre-dumped is reported before the directory is touched.
  const startTicks = await native.checkTarget(pid).catch((err: unknown) => {
    throw fromNative(err);
  });
  const trackMem = options.trackMem ?? 'auto';
  if (!['auto', 'uffd-wp', 'soft-dirty', 'none'].includes(trackMem)) {
    throw new PredumpError(
      'EINVAL',
      `unknown dirty tracking '${String(trackMem)}': use auto, uffd-wp, soft-dirty or none`,
    );
  }
  if (mode === 'freeze-free' && trackMem !== 'uffd-wp' && trackMem !== 'auto') {
    throw new PredumpError(
      'EINVAL',
      `the freeze-free mode needs uffd-wp dirty tracking, not '${trackMem}'`,
    );
  }
  const parent =
    options.prevImagesDir === undefined
      ? undefined
      : await openParent(options.prevImagesDir, pid, startTicks);
  const generation = randomBytes(8).toString('hex');
  const dir = await openImagesDir(options.imagesDir);
  const pagesId = 1;
  const progress = new native.Progress();
  const ticker = options.onProgress
    ? setInterval(() => options.onProgress?.(progress.done, progress.total), 100)
    : undefined;
  // Set once this run has started the target's dirty tracking: a failure after
  // that ends it again, leaving nothing of ours in the target.
  let createdTracking = false;
  try {
    const report = await abortable(
      native.preDump(
        {
          pid,
          mode,
          trackMem,
          generation,
          parentPages: parent?.generation ? parent.pages : undefined,
          parentGeneration: parent?.generation,
          finalDump: options.finalDump,
          leaveStopped: options.leaveStopped,
          pagesPath: path.join(dir.path, pagesFileName(pagesId)),
          bufferBytes: options.bufferBytes,
        },
        progress,
      ),
      options.signal,
      progress,
    ).catch((err: unknown) => {
      throw fromNative(err);
    });
    createdTracking = report.createdTracking;
    const entries: PagemapEntry[] = [];
    for (let i = 0; i < report.regions.length; i += 2) {
      entries.push({ vaddr: report.regions[i], nrPages: report.regions[i + 1], flags: PE_PRESENT });
    }
    let pagesSkippedParent = 0;
    for (let i = 0; i < report.parentRegions.length; i += 2) {
      entries.push({
        vaddr: report.parentRegions[i],
        nrPages: report.parentRegions[i + 1],
        flags: PE_PARENT,
      });
      pagesSkippedParent += report.parentRegions[i + 1];
    }
    entries.sort((a, b) => a.vaddr - b.vaddr);
    if (parent)
      await symlink(path.relative(dir.path, parent.dir) || '.', path.join(dir.path, PARENT_LINK));
    const trackBackend = report.trackBackend as PreDumpResult['trackBackend'];
    if (trackBackend !== 'none' || options.finalDump) {
      const record: TrackRecord = {
        pid,
        generation,
        trackMem: trackBackend,
        final: options.finalDump === true,
      };
      await writeFile(path.join(dir.path, TRACK_FILE), JSON.stringify(record) + '\n', {
        mode: 0o600,
      });
    }
    const us = (x: number): number => Math.round(x);
    await writePreDumpImages(dir.path, {
      pid,
      pagesId,
      entries,
      stats: {
        freezingTime: us(report.freezingUs),
        frozenTime: us(report.frozenUs),
        memdumpTime: us(report.scanUs),
        memwriteTime: us(report.drainUs),
        pagesScanned: report.pagesScanned,
        pagesSkippedParent,
        pagesWritten: report.pagesWritten,
        pagesLazy: 0,
        pagePipes: Math.max(1, report.pipes),
        pagePipeBufs: entries.length,
      },
      inventory: {
        dumpUptime: BigInt(report.dumpUptimeUs),
        preDumpMode: report.mode === 'splice' ? PRE_DUMP_MODE.splice : PRE_DUMP_MODE.read,
      },
    }).catch((err: unknown) => {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        throw new PredumpError('ENOSPC', `no space left while writing images into ${dir.path}`);
      }
      throw err;
    });
    const ms = (x: number): number => x / 1000;
    const bytesWritten = report.pagesWritten * PAGE;
    return {
      pid,
      imagesDir: dir.path,
      mode: report.mode as PreDumpModeName,
      requestedMode: mode,
      fallback: report.fallback ?? null,
      pipes: report.pipes,
      pinnedBytes: report.pinnedBytes,
      injectedCalls: report.injectedCalls,
      injectMs: report.injectUs / 1000,
      partial: report.partial,
      threads: report.threads,
      scanMethod: report.scanMethod,
      pagemapEntries: entries.length,
      pagesScanned: report.pagesScanned,
      pagesPresent: report.pagesPresent,
      pagesWritten: report.pagesWritten,
      pagesGone: report.pagesGone,
      pagesSkippedParent,
      trackMem,
      trackBackend,
      parent: parent?.dir ?? null,
      trackNote:
        report.trackNote ??
        (parent && !parent.generation && trackBackend !== 'none'
          ? 'the parent was made without dirty tracking: every page is copied'
          : null),
      bytesWritten,
      freezingMs: ms(report.freezingUs),
      frozenMs: ms(report.frozenUs),
      stoppedWindowMs: ms(report.stoppedWindowUs),
      scanMs: ms(report.scanUs),
      drainMs: ms(report.drainUs),
      totalMs: performance.now() - started,
      drainMBps: report.drainUs > 0 ? bytesWritten / report.drainUs : 0,
      bufferBytes: report.bufferBytes,
      readvCalls: report.readvCalls,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } catch (err) {
    await discardImages(dir);
    if (createdTracking) await native.untrack(pid).catch(() => undefined);
    throw err;
  } finally {
    if (ticker) clearInterval(ticker);
  }
}

/**
 * Rejects with EINTERRUPTED when `signal` aborts, but never while the target is
 * frozen: a process that exits while its tracer thread is in the middle of an
 * injected call (splice mode, tracking) would leave the target in our trap. It
 * waits until the target runs again (or the work ends), which takes at most the
 * frozen window.
 */
function abortable<T>(
  work: Promise<T>,
  signal: AbortSignal | undefined,
  progress: { readonly thawed: boolean },
): Promise<T> {
  if (!signal) return work;
  const interrupted = (): PredumpError =>
    new PredumpError('EINTERRUPTED', `interrupted (${String(signal.reason ?? 'aborted')})`);
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const onAbort = (): void => {
      const wait = (): void => {
        if (settled) return;
        if (progress.thawed) reject(interrupted());
        else setTimeout(wait, 1);
      };
      wait();
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => {
      settled = true;
      signal.removeEventListener('abort', onAbort);
    });
  });
}
