/**
 * A pre-dump of a process tree (`-t ROOT` where ROOT has descendants), as `criu pre-dump -t`
 * makes it: the core freezes the whole tree together, finds every process's pages and the
 * tree's anonymous shared memory while frozen, thaws it and writes one pages image per process
 * and per shared object, each with its pagemap; this side writes stats and inventory around them.
 *
 * Dirty tracking works as for one process, per process of the tree. Anonymous shared memory is
 * compared with the chain instead: on parent images that hold the same object (its identity
 * recorded in predump-track.json), a page is copied only if it differs from the chain's copy
 * (the core's shmem_chain); with a page server it is copied whole. With a page server the pages go over one connection, each
 * process's and each shared object's pagemap under its own id, as `criu pre-dump -t ROOT
 * --page-server` sends them; this directory then keeps what CRIU's client keeps (inventory,
 * stats, the parent link) and predump's record of what was sent. In freeze-free mode the tree
 * is never frozen as a whole: each process is pre-dumped as one process's freeze-free pre-dump
 * is, while it runs, to files or over the tree's one page-server connection. In splice mode
 * (the core's tree_dump::splice) each process's pages are referenced into pipes inside the one
 * freeze and drained after the thaw; a process that cannot be spliced is copied as in read mode,
 * and named with the reason.
 */
import { fromNative, PredumpError } from './errors.js';
import { discardImages, openImagesDir } from './images-dir.js';
import { readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  INVENTORY_FILE,
  PARENT_LINK,
  PE_PARENT,
  PRE_DUMP_MODE,
  readPreDumpDir,
  readTreeDir,
  writeStatsAndInventory,
} from './images/index.js';
import { native } from './native.js';
import { bootId, checkChain, TRACK_FILE, type TrackRecord } from './parent.js';
import { randomHex } from './random.js';
import type { TreeListing, TreePreDumpReport, TreeSent } from './generated/native.js';
import {
  abortable,
  copyTimes,
  notPreDumped as toNotPreDumped,
  DEFAULT_SERVER_FORMAT,
  noSpace,
  pagesOf,
  serverClient,
  type LeftOutResult,
  type PageServerSent,
  type PreDumpModeName,
  type PreDumpOptions,
  type PreDumpResult,
  type ProcessResult,
  type SharedMemoryResult,
} from './predump.js';

const PAGE = 4096;

/** The tree of `root` as it is now (unfrozen: it may change at once). */
export async function listTree(root: number): Promise<TreeListing> {
  return native.listTree(root).catch((err: unknown) => {
    throw fromNative(err);
  });
}

/** Whether `-t root` names more than one process: a tree pre-dump. */
export function isTree(listing: TreeListing): boolean {
  return listing.members.length > 1 || listing.left.length > 0;
}

/**
 * The mode of a tree pre-dump of `processes` processes, as the core decides it (a tree's auto
 * is read); a refusal of the core's (none since every mode runs on a tree) as an EINVAL.
 */
function treeMode(options: PreDumpOptions, processes: number): PreDumpModeName {
  try {
    return native.resolveTreeMode(
      options.mode ?? 'auto',
      options.trackMem ?? 'auto',
      options.finalDump ?? false,
      Boolean(options.pageServer),
      processes,
    ) as PreDumpModeName;
  } catch (err) {
    throw fromNative(err);
  }
}

/** The parent images of a tree pre-dump. */
interface TreeParent {
  dir: string;
  /** Its dump_uptime (µs after boot). */
  madeUs: number;
  pids: number[];
  /** The pages each process's chain holds, as [vaddr, nrPages] pairs, by pid. */
  pages: Map<number, Float64Array>;
  /** The arming of the tracking that made it (absent: made without tracking, or by CRIU). */
  generation?: string;
  /** Its pages went to a page server: only a pre-dump to a page server can build on it. */
  pageServer: boolean;
  /** The shared objects it recorded, shmid and identity (none: made by CRIU or older). */
  shmem: { shmid: number; identity: string }[];
}

/**
 * Opens `given` (relative to `imagesDir`, as CRIU's --prev-images-dir) as the parent of a
 * pre-dump of the tree of `root`: complete, made in this boot, holding `root` (the same
 * process: started before the parent was made).
 */
async function openTreeParent(
  given: string,
  imagesDir: string,
  root: number,
  rootStartTicks: number,
): Promise<TreeParent> {
  const abs = path.resolve(path.resolve(imagesDir), given);
  const refuse = (why: string): PredumpError =>
    new PredumpError('EPARENT', `parent images ${given} ${why}`);
  const record = await readFile(path.join(abs, TRACK_FILE), 'utf8').then(
    (text) => JSON.parse(text) as TrackRecord,
    () => undefined,
  );
  if (record?.pageServer) return sentTreeParent(abs, record, refuse, root, rootStartTicks);
  const t = await readTreeDir(abs).catch((err: NodeJS.ErrnoException) => {
    // As for one process (parent.ts): a missing directory and a file are said to be that.
    if (err.code === 'ENOENT') {
      throw refuse(
        `do not exist (${abs}): a relative --prev-images-dir is relative to the images ` +
          'directory (-D), as in CRIU',
      );
    }
    if (err.code === 'ENOTDIR') throw refuse('are not a directory');
    throw refuse(`cannot be read: ${err.message}`);
  });
  if (!t.dir.complete) throw refuse('are incomplete (no inventory.img)');
  const pids = t.processes.map((p) => p.pid);
  if (!pids.includes(root)) {
    throw refuse(
      `were made for process${pids.length === 1 ? '' : 'es'} ${pids.join(', ')}, not the tree of ${root}`,
    );
  }
  const madeUs = Number(t.dir.inventory?.dumpUptime ?? 0);
  const nowUs = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]) * 1e6;
  if (madeUs > nowUs + 1e6) {
    throw refuse(
      `were made before the last reboot (${madeUs / 1e6} s after a boot; this one is ${nowUs / 1e6} s old)`,
    );
  }
  if (madeUs === 0 || startedUs(rootStartTicks) > madeUs) {
    throw refuse(`were made for an earlier process with pid ${root}: the pid was reused`);
  }
  // Pages a process's parent images leave to their own parent must be there, as for one
  // process: the chain holds them only then.
  for (const p of t.processes.filter((p) => p.entries.some((e) => e.flags & PE_PARENT))) {
    const d = await readPreDumpDir(abs, { pid: p.pid }).catch((err: Error) => {
      throw refuse(`cannot be read: ${err.message}`);
    });
    await checkChain(abs, d, p.pid, given);
  }
  const pages = new Map(
    t.processes.map((p) => [
      p.pid,
      new Float64Array(p.entries.flatMap((e) => [e.vaddr, e.nrPages])),
    ]),
  );
  return {
    dir: abs,
    madeUs,
    pids,
    pages,
    // A record written for shared memory alone (--track-mem none) names no arming.
    generation:
      record?.pid === root && !record.final && record.trackMem !== 'none'
        ? record.generation
        : undefined,
    pageServer: false,
    shmem: record?.pid === root ? (record.shmem ?? []) : [],
  };
}

/**
 * The local half of a tree pre-dump sent to a page server (inventory, stats, and the record of
 * every pagemap sent): the server holds the pages and answers for them (PS_IOV_PARENT); the
 * record says what they are.
 */
async function sentTreeParent(
  abs: string,
  record: TrackRecord,
  refuse: (why: string) => PredumpError,
  root: number,
  rootStartTicks: number,
): Promise<TreeParent> {
  const sent = record.pageServer!;
  if (!(await stat(path.join(abs, INVENTORY_FILE)).catch(() => undefined))) {
    throw refuse('are incomplete (no inventory.img)');
  }
  const processes = sent.processes ?? [{ pid: record.pid, entries: sent.entries }];
  const pids = processes.map((p) => p.pid);
  if (!pids.includes(root)) {
    throw refuse(
      `were made for process${pids.length === 1 ? '' : 'es'} ${pids.join(', ')}, not the tree of ${root}`,
    );
  }
  if (record.bootId !== undefined && record.bootId !== (await bootId())) {
    throw refuse(`were made before the last reboot (boot ${record.bootId})`);
  }
  const madeUs = sent.dumpUptimeUs;
  if (!(madeUs > 0) || startedUs(rootStartTicks) > madeUs) {
    throw refuse(`were made for an earlier process with pid ${root}: the pid was reused`);
  }
  const pages = new Map(
    processes.map((p) => {
      const pairs: number[] = [];
      for (let i = 0; i + 2 < p.entries.length; i += 3)
        pairs.push(p.entries[i]!, p.entries[i + 1]!);
      return [p.pid, new Float64Array(pairs)];
    }),
  );
  return {
    dir: abs,
    madeUs,
    pids,
    pages,
    generation: record.pid === root && !record.final ? record.generation : undefined,
    pageServer: true,
    shmem: [],
  };
}

function startedUs(startTicks: number): number {
  return (startTicks / native.clockTicksPerSecond()) * 1e6;
}

/** Pre-dumps the tree of `options.pid` (its listing: `listing`) into a new image directory. */
export async function preDumpTree(
  options: PreDumpOptions,
  listing: TreeListing,
  started: number,
  /** The mode a process of its own resolved `auto` to (it then runs in that mode). */
  aloneMode?: PreDumpModeName,
): Promise<PreDumpResult> {
  const mode = aloneMode ?? treeMode(options, listing.members.length);
  const root = options.pid;
  const parent =
    options.prevImagesDir === undefined
      ? undefined
      : await openTreeParent(
          options.prevImagesDir,
          options.imagesDir,
          root,
          listing.members[0]!.startTime,
        );
  const ps = options.pageServer;
  if (parent?.pageServer && !ps) {
    throw new PredumpError(
      'EPARENT',
      `parent images ${options.prevImagesDir} were sent to a page server: their pages are not ` +
        'on this host, so this pre-dump must go to the page server too (--page-server)',
    );
  }
  const generation = randomHex(8);
  // A process of the parent's tree is only given its chain if it is the same process: the
  // same pid, started before the parent was made (else the pid was reused).
  const parents = parent
    ? listing.members
        .filter((m) => parent.pages.has(m.pid) && startedUs(m.startTime) <= parent.madeUs)
        .map((m) => ({ pid: m.pid, startTime: m.startTime, pages: parent.pages.get(m.pid)! }))
    : undefined;
  const dir = await openImagesDir(options.imagesDir);
  // The processes whose tracking this run started: a failure ends it in them again.
  let createdTracking: number[] = [];
  const progress = new native.Progress();
  const ticker = options.onProgress
    ? setInterval(() => options.onProgress?.(progress.done, progress.total), 100)
    : undefined;
  try {
    const nativeOptions = {
      root,
      mode,
      dir: dir.path,
      bufferBytes: options.bufferBytes,
      finalDump: options.finalDump,
      leaveStopped: options.leaveStopped,
      trackMem: options.trackMem ?? 'auto',
      generation,
      parentGeneration: parent?.generation,
      parentMadeUs: parent?.madeUs,
      parents,
      // Each shared object the parent holds is compared with the chain's copy (locally only:
      // with a page server the chain is on the server, and each object is copied whole).
      shmemParent:
        parent && !parent.pageServer
          ? {
              dir: parent.dir,
              objects: parent.shmem.map((o) => ({ shmid: o.shmid, identity: o.identity })),
            }
          : undefined,
    };
    const format = ps?.format ?? DEFAULT_SERVER_FORMAT;
    const { report, sent } = await abortable<{ report: TreePreDumpReport; sent?: TreeSent }>(
      ps
        ? native.preDumpTreeToServer(nativeOptions, serverClient(ps), progress)
        : native.preDumpTree(nativeOptions, progress).then((report) => ({ report })),
      options.signal,
      progress,
    ).catch((err: unknown) => {
      throw fromNative(err);
    });
    createdTracking = report.processes.filter((p) => p.createdTracking).map((p) => p.pid);
    // Splice mode: the mode used is splice if any process was spliced; read (with the
    // reasons, as one process's fallback) if none could be.
    const spliced = report.processes.filter((p) => p.spliced);
    const fellBack = report.processes.filter((p) => p.fallback);
    const usedMode: PreDumpModeName =
      report.mode === 'splice' && spliced.length === 0 && fellBack.length > 0
        ? 'read'
        : (report.mode as PreDumpModeName);
    const fallback = usedMode === 'read' && report.mode === 'splice' ? fallbackOf(report) : null;
    const unreadable = report.processes.reduce((a, p) => a + p.unreadablePages, 0);
    const tracking = report.processes.find((p) => p.tracking !== 'none')?.tracking ?? 'none';
    let trackNote = treeTrackNote(report, parent !== undefined, tracking, ps !== undefined);
    if (sent && ps && sent.notInServerParent.length > 0) {
      const pids = sent.notInServerParent;
      const none = `the page server at ${ps.address}:${ps.port} holds no parent images (its --prev-images-dir) of process${pids.length === 1 ? '' : 'es'} ${pids.join(', ')}: every page of ${pids.length === 1 ? 'it' : 'them'} is copied`;
      trackNote = trackNote ? `${none}; ${trackNote}` : none;
    }
    // What the server stored is what was sent: the chain's pages for a next pre-dump.
    const sentEntries = new Map(
      (sent?.pagemaps ?? [])
        .filter((p) => p.kind === 'process')
        .map((p) => [p.id, Array.from(p.entries)]),
    );
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
    const privateWritten = sum(report.processes.map((p) => p.pagesWritten));
    const sharedWritten = sum(report.shmem.map((s) => pagesOf(s.regions)));
    const sharedSkippedParent = sum(report.shmem.map((s) => pagesOf(s.parentRegions)));
    const pagesScanned = sum(report.processes.map((p) => p.pagesScanned));
    const pagesSkippedParent = sum(report.processes.map((p) => pagesOf(p.parentRegions)));
    if (parent) {
      await symlink(
        path.relative(dir.path, parent.dir) || '.',
        path.join(dir.path, PARENT_LINK),
      ).catch(noSpace(dir.path));
    }
    // Each shared object written here, with its identity, for the next pre-dump's check.
    const shmemRecord = sent
      ? []
      : report.shmem.flatMap((s) => (s.identity ? [{ shmid: s.shmid, identity: s.identity }] : []));
    if (options.finalDump || tracking !== 'none' || sent || shmemRecord.length > 0) {
      // The arming the next pre-dump on this one must find (and what `show` reads to call
      // it a dump), as for one process; with a page server, what was sent.
      const record: TrackRecord = {
        pid: root,
        generation,
        trackMem: tracking,
        final: options.finalDump === true,
        bootId: await bootId(),
        mode: usedMode,
        ...(sent && ps
          ? {
              pageServer: {
                address: ps.address,
                port: ps.port,
                dumpUptimeUs: report.dumpUptimeUs,
                entries: sentEntries.get(root) ?? [],
                processes: report.processes.map((p) => ({
                  pid: p.pid,
                  entries: sentEntries.get(p.pid) ?? [],
                })),
              },
            }
          : {}),
        ...(shmemRecord.length > 0 ? { shmem: shmemRecord } : {}),
      };
      await writeFile(path.join(dir.path, TRACK_FILE), JSON.stringify(record) + '\n', {
        mode: 0o600,
      }).catch(noSpace(dir.path));
    }
    const us = (x: number): number => Math.round(x);
    // The core wrote every pages image with its pagemap (or sent them to the page server).
    const processEntries = sum(report.processes.map((p) => p.pagemapEntries));
    await writeStatsAndInventory(dir.path, {
      stats: {
        freezingTime: us(report.freezingUs),
        frozenTime: us(report.frozenUs),
        memdumpTime: us(report.memdumpUs),
        memwriteTime: us(report.memwriteUs),
        pagesScanned,
        pagesSkippedParent,
        pagesWritten: privateWritten,
        pagesLazy: 0,
        pagePipes: 1,
        pagePipeBufs: processEntries,
        shpagesScanned: sum(report.shmem.map((s) => s.size / PAGE)),
        shpagesSkippedParent: sharedSkippedParent,
        shpagesWritten: sharedWritten,
      },
      // "splice" as CRIU's splice pre-dump writes it, unless pages of unreadable mappings were
      // left out (predump leaves them out in every mode, CRIU's splice mode copies them: its
      // next pre-dump must copy them itself), as for one process.
      inventory: {
        dumpUptime: BigInt(report.dumpUptimeUs),
        preDumpMode:
          usedMode === 'splice' && unreadable === 0 ? PRE_DUMP_MODE.splice : PRE_DUMP_MODE.read,
      },
    }).catch(noSpace(dir.path));
    const ms = (x: number): number => x / 1000;
    const pagesWritten = privateWritten + sharedWritten;
    const bytesWritten = pagesWritten * PAGE;
    const leftovers = report.processes
      .filter((p) => p.leftoversRemoved)
      .map((p) => `${p.leftoversRemoved} (process ${p.pid})`);
    const processResults: ProcessResult[] = report.processes.map((p) => ({
      pid: p.pid,
      ppid: p.ppid,
      comm: p.comm,
      pagesId: p.pagesId,
      threads: p.threads,
      pagesScanned: p.pagesScanned,
      pagesPresent: p.pagesPresent,
      pagesWritten: p.pagesWritten,
      pagesGone: p.pagesGone,
      partial: p.partial,
      fallback: report.mode === 'splice' ? (p.fallback ?? null) : null,
      inParent: parent
        ? parent.pids.includes(p.pid) && startedUs(p.startTime) <= parent.madeUs
          ? 'yes'
          : parent.pids.includes(p.pid)
            ? 'pid-reused'
            : 'new'
        : null,
    }));
    const sharedMemory: SharedMemoryResult[] = report.shmem.map((s) => ({
      shmid: s.shmid,
      sizeBytes: s.size,
      pagesId: s.pagesId,
      pagesWritten: pagesOf(s.regions),
      pagesSkippedParent: pagesOf(s.parentRegions),
      pagesCompared: s.pagesCompared,
      inParent: !parent
        ? null
        : ps
          ? 'page-server'
          : (s.inParent as Exclude<SharedMemoryResult['inParent'], 'page-server' | null>),
      pids: s.pids,
      mappings: s.mappings,
    }));
    const notPreDumped = report.notDumped.map(toNotPreDumped);
    const leftOut: LeftOutResult[] = report.left.map((l) => ({
      pid: l.pid,
      ppid: l.ppid,
      reason: l.reason as LeftOutResult['reason'],
      comm: l.comm ?? null,
    }));
    // Tracking left by a pre-dump of one process alone matters when this run does not track.
    const tracked = report.processes
      .filter((p) => p.tracked && p.tracking === 'none')
      .map((p) => p.pid);
    return {
      pid: root,
      imagesDir: dir.path,
      mode: usedMode,
      requestedMode: options.mode ?? 'auto',
      fallback,
      pipes: sum(report.processes.map((p) => p.pipes)),
      pinnedBytes: sum(report.processes.map((p) => p.pinnedBytes)),
      injectedCalls: sum(report.processes.map((p) => p.injectedCalls)),
      injectMs: sum(report.processes.map((p) => p.injectUs)) / 1000,
      partial: report.processes.some((p) => p.partial),
      threads: report.threads,
      scanMethod: report.processes[0]?.scanMethod ?? 'none',
      pagemapEntries: processEntries + sum(report.shmem.map((s) => s.pagemapEntries)),
      pagesScanned,
      pagesPresent: sum(report.processes.map((p) => p.pagesPresent)),
      pagesWritten,
      pagesGone: sum(report.processes.map((p) => p.pagesGone)),
      pagesUnreadable: sum(report.processes.map((p) => p.unreadablePages)),
      pagesSkippedParent,
      sharedPagesWritten: sharedWritten,
      sharedPagesSkippedParent: sharedSkippedParent,
      trackMem: options.trackMem ?? 'auto',
      trackBackend: tracking as PreDumpResult['trackBackend'],
      parent: parent?.dir ?? null,
      trackNote,
      leftoversRemoved: leftovers.length > 0 ? leftovers.join('; ') : null,
      bytesWritten,
      freezingMs: ms(report.freezingUs),
      frozenMs: ms(report.frozenUs),
      stoppedWindowMs: ms(report.stoppedWindowUs),
      scanMs: ms(report.scanUs),
      drainMs: ms(report.drainUs),
      totalMs: performance.now() - started,
      ...copyTimes(report, bytesWritten),
      bufferBytes: report.processes[0]?.bufferBytes ?? 0,
      readvCalls: sum(report.processes.map((p) => p.readvCalls)),
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      pageServer:
        sent && ps ? treeSent(sent, ps.address, ps.port, format, ps.tls !== undefined, root) : null,
      processes: processResults,
      sharedMemory,
      notPreDumped,
      leftOut,
      trackedAlone: tracked,
      droppedFromParent: parent
        ? parent.pids.filter((p) => !report.processes.some((x) => x.pid === p))
        : [],
    };
  } catch (err) {
    await discardImages(dir);
    for (const pid of createdTracking) await native.untrack(pid).catch(() => undefined);
    throw err;
  } finally {
    if (ticker) clearInterval(ticker);
  }
}

/**
 * What the summary says of a tree's tracking: why processes were copied whole despite a
 * parent (each reason once, with its processes), and why shared objects were (their
 * comparison with the chain not possible: see the core's shmem_chain).
 */
function treeTrackNote(
  report: TreePreDumpReport,
  hasParent: boolean,
  tracking: string,
  pageServer: boolean,
): string | null {
  const byNote = new Map<string, number[]>();
  for (const p of report.processes) {
    if (p.trackNote) byNote.set(p.trackNote, [...(byNote.get(p.trackNote) ?? []), p.pid]);
  }
  const all = report.processes.length;
  const notes = [...byNote].map(([note, pids]) =>
    pids.length === all
      ? note
      : `${note} (process${pids.length === 1 ? '' : 'es'} ${pids.join(', ')})`,
  );
  if (hasParent && pageServer && report.shmem.length > 0) {
    notes.push(
      "anonymous shared memory is copied whole to a page server: the chain's copy is on the " +
        'server, where this side cannot compare it',
    );
  }
  for (const s of report.shmem) if (s.note) notes.push(s.note);
  if (tracking === 'none' && hasParent && byNote.size === 0) {
    notes.push(
      report.shmem.length > 0
        ? "no dirty tracking: every process's pages are copied again (shared memory is compared with the parent's)"
        : 'no dirty tracking: every page is copied again',
    );
  }
  return notes.length > 0 ? notes.join('; ') : null;
}

/**
 * Why a tree's processes were not spliced: each reason once, with its processes unless it
 * is every process's.
 */
function fallbackOf(report: TreePreDumpReport): string | null {
  const byReason = new Map<string, number[]>();
  for (const p of report.processes) {
    if (p.fallback) byReason.set(p.fallback, [...(byReason.get(p.fallback) ?? []), p.pid]);
  }
  if (byReason.size === 0) return null;
  return [...byReason]
    .map(([why, pids]) =>
      pids.length === report.processes.length
        ? why
        : `${why} (process${pids.length === 1 ? '' : 'es'} ${pids.join(', ')})`,
    )
    .join('; ');
}

/** What went to the page server, as PreDumpResult says it (`hasParent`: the root's). */
function treeSent(
  sent: TreeSent,
  address: string,
  port: number,
  format: PageServerSent['format'],
  tls: boolean,
  root: number,
): PageServerSent {
  return {
    address,
    port,
    format,
    tls,
    hasParent: sent.pagemaps.some((p) => p.kind === 'process' && p.id === root && p.hasParent),
    headers: sent.headers,
    bytesSent: sent.bytesSent,
    sessionMs: sent.sessionUs / 1000,
  };
}

/** What `untrack` did to one process. */
export interface UntrackedProcess {
  pid: number;
  /** predump's tracking was there and is ended. */
  untracked: boolean;
  leftoversRemoved: string | null;
}

/**
 * Ends predump's dirty tracking (and removes a dead run's leftovers) in `root` and every
 * descendant, one process after the other; those with nothing of predump's are not touched.
 */
export async function untrackTree(root: number): Promise<UntrackedProcess[]> {
  const { members } = await listTree(root);
  const out: UntrackedProcess[] = [];
  for (const m of members) {
    const r = await native.untrack(m.pid).catch((err: unknown) => {
      const e = fromNative(err);
      // A descendant that exited since the listing has nothing left to end.
      if (e.code === 'ESRCH' && m.pid !== root) return undefined;
      throw e;
    });
    if (r) {
      out.push({
        pid: m.pid,
        untracked: r.untracked,
        leftoversRemoved: r.leftoversRemoved ?? null,
      });
    }
  }
  return out;
}
