/**
 * A pre-dump, from the caller's options to a complete image directory:
 * the Rust core freezes, scans, thaws and drains the pages into pages-1.img and
 * writes its pagemap (it owns the pair); this side writes the images around them
 * (stats, inventory last).
 */
import { fromNative, PredumpError } from './errors.js';
import { discardImages, openImagesDir } from './images-dir.js';
import { PARENT_LINK, PRE_DUMP_MODE, writeStatsAndInventory } from './images/index.js';
import { native } from './native.js';
import type {
  PageServerClient,
  PageServerSent as NativeSent,
  NotDumpedMapping,
  PreDumpReport as NativeReport,
} from './generated/native.js';
import { symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomHex } from './random.js';
import { bootId, openParent, TRACK_FILE, type TrackRecord } from './parent.js';
import type { TlsOptions } from './page-server.js';
import { isTree, listTree, preDumpTree } from './tree.js';

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
   * - 'auto' (default): freeze-free where uffd-wp tracking is in use, else read; read on a
   *   tree of more than one process (freeze-free there only when asked for).
   */
  mode?: PreDumpMode;
  /**
   * Dirty tracking, so that a later pre-dump with this one as its parent copies
   * only what changed: 'auto' (default) picks soft-dirty where the kernel has it
   * (nothing is left in the target), else uffd-wp (a userfaultfd and a marker fd
   * stay in the target until `dump` or `untrack`), else none; with the freeze-free
   * mode, uffd-wp (its tracking); 'none' tracks
   * nothing: every pre-dump is a full one.
   */
  trackMem?: TrackMem;
  /**
   * The previous pre-dump of the same process (predump's or CRIU's): pages it
   * holds that did not change are not copied again. A relative path is relative
   * to `imagesDir`, as CRIU's --prev-images-dir.
   */
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
  /**
   * Send the pages to a page server (`criu page-server` or `predump
   * page-server`) instead of writing them here, as `criu pre-dump
   * --page-server`: `imagesDir` then keeps what CRIU keeps locally (inventory,
   * stats, the parent link) and predump's record of what was sent.
   */
  pageServer?: PageServerTarget;
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

/** Where a pre-dump's pages go when not into local files. */
export interface PageServerTarget {
  address: string;
  port: number;
  /**
   * The header layout the server reads (there is no handshake): 'criu-4.2'
   * (default: CRIU 4.2 and later, predump's server) or 'criu-4.1' (CRIU up to
   * 4.1, e.g. Debian 12's 3.17).
   */
  format?: 'criu-4.2' | 'criu-4.1';
  /** TLS with CRIU's options (absent: plain TCP). */
  tls?: TlsOptions;
  /** How long a connect or any wait for the server may take (default 30 s). */
  timeoutMs?: number;
}

/** The page server's header layout when a target names none: CRIU 4.2's. */
export const DEFAULT_SERVER_FORMAT = 'criu-4.2';

/** A page server target with its defaults, as the addon takes it (one process or a tree). */
export function serverClient(ps: PageServerTarget): PageServerClient {
  return {
    address: ps.address,
    port: ps.port,
    format: ps.format ?? DEFAULT_SERVER_FORMAT,
    tls: ps.tls,
    timeoutMs: ps.timeoutMs ?? 30_000,
  };
}

/** What went to the page server. */
export interface PageServerSent {
  address: string;
  port: number;
  format: 'criu-4.2' | 'criu-4.1';
  tls: boolean;
  /** The server's parent images hold this process's pagemap. */
  hasParent: boolean;
  headers: number;
  bytesSent: number;
  /** From the connect to the server's answer that everything is stored. */
  sessionMs: number;
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
  /**
   * Present pages of unreadable mappings, left out as in every mode. When a splice
   * pre-dump leaves some out, its inventory says read mode (what CRIU's next
   * pre-dump must know: it copies them itself then).
   */
  pagesUnreadable: number;
  /** Present pages left to the parent images (PE_PARENT entries). */
  pagesSkippedParent: number;
  /**
   * A tree's anonymous shared memory: the pages written (a part of `pagesWritten`), and those
   * left to the parent (PE_PARENT: equal to the chain's copy; not in `pagesSkippedParent`,
   * which counts the processes' pages, as CRIU's stats-dump keeps the two apart). 0 for a
   * single process.
   */
  sharedPagesWritten: number;
  sharedPagesSkippedParent: number;
  /** The tracking asked for, and the one used ('auto' resolved). */
  trackMem: TrackMem;
  trackBackend: 'uffd-wp' | 'soft-dirty' | 'none';
  parent: string | null;
  /** Why a pre-dump with a parent still copied every page. */
  trackNote: string | null;
  /** What a predump that died while injecting had left in the target, removed by this run. */
  leftoversRemoved: string | null;
  bytesWritten: number;
  /** Time to stop every thread. */
  freezingMs: number;
  /** Time every thread was stopped (CRIU's frozen_time). */
  frozenMs: number;
  /** Time any thread was stopped: freezing plus frozen. */
  stoppedWindowMs: number;
  scanMs: number;
  /**
   * From thaw until the pages image is on disk: the copy and its fsync in a pre-dump,
   * the fsync alone in a dump (`copiedWhileFrozen`).
   */
  drainMs: number;
  totalMs: number;
  /**
   * Bytes copied after the thaw per second of drain, in MB/s (10^6 bytes): 0 in a dump,
   * which copied nothing after the thaw (see `copyMBps`).
   */
  drainMBps: number;
  /** The pages were copied inside the frozen window (a dump), not after the thaw. */
  copiedWhileFrozen: boolean;
  /** The pages read and written (or sent), the fsync left out, wherever that happened. */
  copyMs: number;
  /** Bytes copied per second of `copyMs`, in MB/s (10^6 bytes). */
  copyMBps: number;
  /** The pages images synced (fsync), after the copy. */
  syncMs: number;
  /**
   * CRIU's memdump_time, as written into stats-dump (in µs there): the pages found and,
   * in a dump, everything else done to them while frozen; in a splice pre-dump their
   * referencing into pipes (frozen); in a read pre-dump their reading after the thaw.
   */
  memdumpMs: number;
  /**
   * CRIU's memwrite_time: the pages images written, inside the frozen window in a dump
   * (its fsync after the thaw left out, CRIU has none), after the thaw in a pre-dump
   * (its fsync included).
   */
  memwriteMs: number;
  bufferBytes: number;
  readvCalls: number;
  /** Peak resident memory of this process so far (the tool's own footprint). */
  peakRssBytes: number;
  /** Where the pages went, with --page-server (null: into imagesDir). */
  pageServer: PageServerSent | null;
  /** Every process pre-dumped: the root first, each after its parent (CRIU's tree order). */
  processes: ProcessResult[];
  /**
   * The anonymous shared memory objects pre-dumped, each once for the tree
   * (pagemap-shmem-SHMID.img). null for a single process without such memory, or one
   * pre-dumped in a mode or to a destination the tree's path lacks (none since splice mode on
   * trees, 2026-12-05), whose anonymous shared mappings would then be listed in notPreDumped; a
   * process that maps such memory is otherwise pre-dumped as a tree of one, and they are here.
   */
  sharedMemory: SharedMemoryResult[] | null;
  /** Shared mappings left out, with their size and why. */
  notPreDumped: NotPreDumpedResult[];
  /** Processes of the tree not pre-dumped: zombies, and those that exited while it froze. */
  leftOut: LeftOutResult[];
  /** Processes of the parent images that are no longer in the tree (exited): dropped. */
  droppedFromParent: number[];
  /**
   * Processes of the tree holding predump's uffd-wp tracking from an earlier pre-dump of
   * them alone, which a tree pre-dump neither uses nor ends ('predump untrack -t PID').
   */
  trackedAlone: number[];
}

/** One process of a pre-dump. */
export interface ProcessResult {
  pid: number;
  /** null for a single-process pre-dump. */
  ppid: number | null;
  comm: string | null;
  /** Its pages image is pages-ID.img, named by pagemap-PID.img. */
  pagesId: number;
  threads: number;
  pagesScanned: number;
  pagesPresent: number;
  pagesWritten: number;
  pagesGone: number;
  /** It exited while its pages were copied. */
  partial: boolean;
  /**
   * A tree in splice mode: why this process was not spliced (its pages copied after the
   * thaw, as in read mode); null if it was, and in every other mode.
   */
  fallback?: string | null;
  /**
   * With parent images: whether they hold this process ('yes'), not at all ('new': it was
   * pre-dumped whole), or hold another process that had its pid ('pid-reused': never matched
   * to it). null without parent images, and for a single process.
   */
  inParent: 'yes' | 'new' | 'pid-reused' | null;
}

/** An anonymous shared memory object (MAP_SHARED|MAP_ANONYMOUS, /dev/zero shared). */
export interface SharedMemoryResult {
  /** CRIU's shmid (the object's inode): pagemap-shmem-SHMID.img. */
  shmid: number;
  sizeBytes: number;
  pagesId: number;
  pagesWritten: number;
  /** Its present pages left to the parent (PE_PARENT): equal to the chain's copy. */
  pagesSkippedParent: number;
  /** Its pages compared with the chain's copy (those the chain holds). */
  pagesCompared: number;
  /**
   * With parent images: compared with the chain's copy page by page ('yes'), or copied whole
   * because the parent holds no object of this shmid ('new'), recorded another object under it
   * ('other-object': its inode number was reused), does not record which object it was
   * ('unrecorded': made by CRIU or an older predump), cannot be used ('unusable'), or is on a
   * page server ('page-server'). null without parent images.
   */
  inParent: 'yes' | 'new' | 'other-object' | 'unrecorded' | 'unusable' | 'page-server' | null;
  /** The processes mapping it. */
  pids: number[];
  mappings: number;
}

/** A shared mapping not in the pre-dump. */
export interface NotPreDumpedResult {
  pid: number;
  start: number;
  end: number;
  bytes: number;
  name: string;
  /**
   * 'shmem' (a single process's anonymous shared memory), 'sysv-shm', 'memfd', 'hugetlb'
   * or 'file-shared'.
   */
  kind: string;
  reason: string;
}

/** A shared mapping the core left out, as the result lists it. */
export function notPreDumped(n: NotDumpedMapping): NotPreDumpedResult {
  return {
    pid: n.pid,
    start: n.start,
    end: n.end,
    bytes: n.end - n.start,
    name: n.name,
    kind: n.kind,
    reason: n.reason,
  };
}

/** A process of the tree that is not in the pre-dump. */
export interface LeftOutResult {
  pid: number;
  ppid: number;
  /** zombie: exited, not yet reaped (no memory); exited: while the tree was being frozen. */
  reason: 'zombie' | 'exited';
  comm: string | null;
}

const PAGE = 4096;

/**
 * A write into the images directory that found its file system full: ENOSPC, as the core says
 * it of the pages images and pagemaps (the failed run's files are then removed).
 */
export function noSpace(dir: string): (err: unknown) => never {
  return (err) => {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
      throw new PredumpError('ENOSPC', `no space left while writing images into ${dir}`);
    }
    throw err;
  };
}

/** The pages of [vaddr, nrPages] pairs. */
export function pagesOf(regions: Float64Array): number {
  let n = 0;
  for (let i = 1; i < regions.length; i += 2) n += regions[i]!;
  return n;
}

/** Pre-dumps a live process into a new CRIU image directory. */
export async function preDump(options: PreDumpOptions): Promise<PreDumpResult> {
  const mode = options.mode ?? 'auto';
  const trackMem = options.trackMem ?? 'auto';
  // The core decides which names and combinations work (and what auto takes).
  const refused = native.preDumpChoiceRefused(mode, trackMem, options.finalDump ?? false);
  if (refused !== null) throw new PredumpError('EINVAL', refused);
  // Then what this kernel cannot do (soft-dirty asked for by name where the kernel keeps no
  // soft-dirty bits: every page would look unwritten), probed before anything is touched.
  try {
    native.resolvePreDumpMode(mode, trackMem, options.finalDump ?? false);
  } catch (err) {
    throw fromNative(err);
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
  // A tree (descendants, or zombies among its children) is pre-dumped whole.
  const listing = await listTree(pid);
  if (isTree(listing)) return preDumpTree(options, listing, started);
  // So is a process of its own with anonymous shared memory, as a tree of one: only the
  // tree's path writes that memory (pagemap-shmem images, as CRIU's pre-dump does), in the
  // mode this process would take (read, splice or freeze-free, into files or to a page
  // server).
  if (listing.aloneWithSharedMemory) {
    const resolved = native.resolvePreDumpMode(mode, trackMem, options.finalDump ?? false);
    if (native.treeRunsMode(resolved, Boolean(options.pageServer))) {
      return preDumpTree(options, listing, started, resolved as PreDumpModeName);
    }
  }
  const parent =
    options.prevImagesDir === undefined
      ? undefined
      : await openParent(options.prevImagesDir, options.imagesDir, pid, startTicks);
  if (parent?.pageServer && !options.pageServer) {
    throw new PredumpError(
      'EPARENT',
      `parent images ${options.prevImagesDir} were sent to a page server: their pages are not ` +
        'on this host, so this pre-dump must go to the page server too (--page-server)',
    );
  }
  const generation = randomHex(8);
  const dir = await openImagesDir(options.imagesDir);
  const progress = new native.Progress();
  const ticker = options.onProgress
    ? setInterval(() => options.onProgress?.(progress.done, progress.total), 100)
    : undefined;
  // Set once this run has started the target's dirty tracking: a failure after
  // that ends it again, leaving nothing of ours in the target.
  let createdTracking = false;
  try {
    const nativeOptions = {
      pid,
      mode,
      trackMem,
      generation,
      parentPages: parent?.pages,
      parentGeneration: parent?.generation,
      parentMadeUs: parent?.madeUs,
      finalDump: options.finalDump,
      leaveStopped: options.leaveStopped,
      imagesDir: dir.path,
      bufferBytes: options.bufferBytes,
    };
    const ps = options.pageServer;
    const format = ps?.format ?? DEFAULT_SERVER_FORMAT;
    const { report, sent } = await abortable<{ report: NativeReport; sent?: NativeSent }>(
      ps
        ? native.preDumpToServer(nativeOptions, serverClient(ps), progress)
        : native.preDump(nativeOptions, progress).then((report) => ({ report, sent: undefined })),
      options.signal,
      progress,
    ).catch((err: unknown) => {
      throw fromNative(err);
    });
    createdTracking = report.createdTracking;
    const pagesSkippedParent = pagesOf(report.parentRegions);
    if (parent)
      await symlink(
        path.relative(dir.path, parent.dir) || '.',
        path.join(dir.path, PARENT_LINK),
      ).catch(noSpace(dir.path));
    const trackBackend = report.trackBackend as PreDumpResult['trackBackend'];
    if (trackBackend !== 'none' || options.finalDump || sent) {
      const record: TrackRecord = {
        pid,
        generation,
        trackMem: trackBackend,
        final: options.finalDump === true,
        bootId: await bootId(),
        mode: report.mode as PreDumpModeName,
        ...(sent && ps
          ? {
              pageServer: {
                address: ps.address,
                port: ps.port,
                dumpUptimeUs: report.dumpUptimeUs,
                // What the server stored is what was sent: the chain's pages for a next pre-dump.
                entries: Array.from(sent.entries),
              },
            }
          : {}),
      };
      await writeFile(path.join(dir.path, TRACK_FILE), JSON.stringify(record) + '\n', {
        mode: 0o600,
      }).catch(noSpace(dir.path));
    }
    const us = (x: number): number => Math.round(x);
    // The core wrote pages-ID.img and pagemap-PID.img (or sent them to the page server).
    await writeStatsAndInventory(dir.path, {
      stats: {
        freezingTime: us(report.freezingUs),
        frozenTime: us(report.frozenUs),
        memdumpTime: us(report.memdumpUs),
        memwriteTime: us(report.memwriteUs),
        pagesScanned: report.pagesScanned,
        pagesSkippedParent,
        pagesWritten: report.pagesWritten,
        pagesLazy: 0,
        pagePipes: Math.max(1, report.pipes),
        pagePipeBufs: report.pagemapEntries,
      },
      inventory: {
        dumpUptime: BigInt(report.dumpUptimeUs),
        // "read" also for a splice pre-dump that left unreadable pages out: CRIU's
        // next splice pre-dump would ask them of a "splice" parent and fail
        // ("Missing … in parent pagemap"); of a "read" one it never does.
        preDumpMode:
          report.mode === 'splice' && report.unreadablePages === 0
            ? PRE_DUMP_MODE.splice
            : PRE_DUMP_MODE.read,
      },
    }).catch(noSpace(dir.path));
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
      pagemapEntries: report.pagemapEntries,
      pagesScanned: report.pagesScanned,
      pagesPresent: report.pagesPresent,
      pagesWritten: report.pagesWritten,
      pagesGone: report.pagesGone,
      pagesUnreadable: report.unreadablePages,
      pagesSkippedParent,
      trackMem,
      trackBackend,
      parent: parent?.dir ?? null,
      leftoversRemoved: report.leftoversRemoved ?? null,
      trackNote:
        report.trackNote ??
        (parent && sent && !sent.hasParent
          ? `the page server at ${ps?.address}:${ps?.port} holds no parent images (its --prev-images-dir): every page is copied`
          : null),
      bytesWritten,
      freezingMs: ms(report.freezingUs),
      frozenMs: ms(report.frozenUs),
      stoppedWindowMs: ms(report.stoppedWindowUs),
      scanMs: ms(report.scanUs),
      drainMs: ms(report.drainUs),
      totalMs: performance.now() - started,
      ...copyTimes(report, bytesWritten),
      bufferBytes: report.bufferBytes,
      readvCalls: report.readvCalls,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      pageServer:
        sent && ps
          ? {
              address: ps.address,
              port: ps.port,
              format,
              tls: ps.tls !== undefined,
              hasParent: sent.hasParent,
              headers: sent.headers,
              bytesSent: sent.bytesSent,
              sessionMs: sent.sessionUs / 1000,
            }
          : null,
      processes: [
        {
          pid,
          ppid: null,
          comm: null,
          pagesId: report.pagesId,
          threads: report.threads,
          pagesScanned: report.pagesScanned,
          pagesPresent: report.pagesPresent,
          pagesWritten: report.pagesWritten,
          pagesGone: report.pagesGone,
          partial: report.partial,
          inParent: null,
        },
      ],
      sharedMemory: null,
      sharedPagesWritten: 0,
      sharedPagesSkippedParent: 0,
      notPreDumped: report.notDumped.map(notPreDumped),
      leftOut: [],
      droppedFromParent: [],
      trackedAlone: [],
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
export function abortable<T>(
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

/** What the core's report says of the copy's times, as PreDumpResult's fields. */
export function copyTimes(
  report: {
    drainUs: number;
    copyUs: number;
    syncUs: number;
    copiedFrozen: boolean;
    memdumpUs: number;
    memwriteUs: number;
  },
  bytesWritten: number,
): Pick<
  PreDumpResult,
  'drainMBps' | 'copiedWhileFrozen' | 'copyMs' | 'copyMBps' | 'syncMs' | 'memdumpMs' | 'memwriteMs'
> {
  return {
    drainMBps: !report.copiedFrozen && report.drainUs > 0 ? bytesWritten / report.drainUs : 0,
    copiedWhileFrozen: report.copiedFrozen,
    copyMs: report.copyUs / 1000,
    copyMBps: report.copyUs > 0 ? bytesWritten / report.copyUs : 0,
    syncMs: report.syncUs / 1000,
    memdumpMs: report.memdumpUs / 1000,
    memwriteMs: report.memwriteUs / 1000,
  };
}
