/**
 * A description of an images directory, for `predump show` and the API.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from './errors.js';
import {
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  PRE_DUMP_MODE,
  isTreeDir,
  readPreDumpDir,
  readTreeDir,
  type DumpStats,
  type PreDumpDir,
  STATS_FILE,
  TRACK_FILE,
} from './images/index.js';

export interface ImagesSummary {
  dir: string;
  /** inventory.img is there: the set was finished. */
  complete: boolean;
  /** A pre-dump (inventory with a pre_dump_mode), or a final dump (`predump dump`, `criu dump`). */
  kind?: 'pre-dump' | 'dump';
  /**
   * How the pages were taken: the inventory's read or splice, or freeze-free where
   * predump's record says so (CRIU's inventory has no such mode: it reads 'read').
   */
  mode?: 'read' | 'splice' | 'freeze-free';
  /**
   * The dirty tracking the images were made with, from predump's record
   * (predump-track.json); null: no record (CRIU's images, or predump's without tracking).
   */
  tracking: 'uffd-wp' | 'soft-dirty' | 'none' | null;
  /** Made by `predump dump`, which ended the tracking (from predump's record). */
  trackingEnded: boolean;
  pid?: number;
  dumpUptimeUs?: number;
  parent?: string;
  entries: { vaddr: number; nrPages: number; flags: number; flagNames: string[] }[];
  pagesPresent: number;
  pagesInParent: number;
  pagesFileBytes?: number;
  stats?: DumpStats;
  /**
   * A process tree's images (several pagemaps, or shared memory): each process in pages-id
   * order (the root first) and each anonymous shared memory object; `pid` is the root's,
   * the page counts are the sums, and `entries` lists the root's.
   */
  processes?: PagemapSummary[];
  sharedMemory?: PagemapSummary[];
  /**
   * The pages and pagemaps went to this page server: the directory holds what CRIU's client
   * keeps locally, and the entries and counts are those predump's record says were sent
   * (`pagesId` 0: the server numbers its own pages images).
   */
  pageServer?: { address: string; port: number };
}

/** One pagemap of a tree's images: a process's (pid) or a shared object's (shmid). */
export interface PagemapSummary {
  pid?: number;
  shmid?: number;
  pagesId: number;
  entries: number;
  pagesPresent: number;
  pagesInParent: number;
}

function flagNames(flags: number): string[] {
  const names: string[] = [];
  if (flags & PE_PARENT) names.push('PE_PARENT');
  if (flags & PE_LAZY) names.push('PE_LAZY');
  if (flags & PE_PRESENT) names.push('PE_PRESENT');
  return names;
}

export async function describeImages(dir: string): Promise<ImagesSummary> {
  const st = await stat(dir).catch(() => undefined);
  if (st === undefined) throw new PredumpError('EDIR', `no such directory: ${dir}`);
  if (!st.isDirectory()) throw new PredumpError('EDIR', `${dir} is not a directory`);
  // A directory of something else altogether (`predump show /etc`) is not an incomplete
  // image set: say so rather than describe nothing as INCOMPLETE.
  const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    throw new PredumpError('EDIR', `cannot read ${dir}: ${err.message}`);
  });
  if (!names.some((n) => /\.img$/.test(n) || n === STATS_FILE)) {
    throw new PredumpError(
      'EDIR',
      `${dir} holds no CRIU images (no inventory.img, pagemap-PID.img, pages-ID.img or ` +
        'stats-dump): not an images directory',
    );
  }
  if (isTreeDir(names)) return describeTree(dir);
  const record = await readRecord(dir);
  if (record?.pageServer && !names.some((n) => n.startsWith('pagemap-'))) {
    return describeSent(dir, record.pageServer);
  }
  let d;
  try {
    d = await readPreDumpDir(dir);
  } catch (err) {
    throw new PredumpError('EIMAGE', (err as Error).message, { cause: err });
  }
  return summarize(dir, d);
}

/** The summary of a directory as read (one process's pagemap in `d`). */
async function summarize(dir: string, d: PreDumpDir): Promise<ImagesSummary> {
  const record = await readRecord(dir);
  const kind = d.inventory
    ? d.inventory.preDumpMode && !record?.final
      ? 'pre-dump'
      : 'dump'
    : undefined;
  const mode =
    record?.mode === 'freeze-free'
      ? 'freeze-free'
      : d.inventory?.preDumpMode === PRE_DUMP_MODE.read
        ? 'read'
        : d.inventory?.preDumpMode === PRE_DUMP_MODE.splice
          ? 'splice'
          : undefined;
  const sum = (bit: number): number =>
    d.entries.filter((e) => e.flags & bit).reduce((n, e) => n + e.nrPages, 0);
  return {
    dir: path.resolve(dir),
    complete: d.complete,
    kind,
    mode,
    tracking: TRACKINGS.find((t) => t === record?.trackMem) ?? null,
    trackingEnded: record?.final === true,
    pid: d.pid,
    dumpUptimeUs: d.inventory?.dumpUptime,
    parent: d.parent,
    entries: d.entries.map((e) => ({ ...e, flagNames: flagNames(e.flags) })),
    pagesPresent: sum(PE_PRESENT),
    pagesInParent: sum(PE_PARENT),
    pagesFileBytes: d.pagesFileBytes,
    stats: d.stats,
  };
}

/** The trackings predump's record (TRACK_FILE, written by preDump(), read by parent.ts) names. */
const TRACKINGS = ['uffd-wp', 'soft-dirty', 'none'] as const;

/** What predump's record says was sent to a page server (parent.ts's TrackRecord). */
interface SentRecord {
  address: string;
  port: number;
  /** The root's pagemap (one process: its only one), as flat [vaddr, nrPages, flags]. */
  entries: number[];
  /** A tree's: every process's. */
  processes?: { pid: number; entries: number[] }[];
}

/** What `show` reads of predump's record; undefined without one (or an unreadable one). */
async function readRecord(
  dir: string,
): Promise<
  | { trackMem?: string; final?: boolean; mode?: string; pid?: number; pageServer?: SentRecord }
  | undefined
> {
  const text = await readFile(path.join(dir, TRACK_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const r = JSON.parse(text) as unknown;
    return typeof r === 'object' && r !== null ? r : undefined;
  } catch {
    return undefined;
  }
}

/** A process tree's images: the root's summary, with every pagemap counted. */
async function describeTree(dir: string): Promise<ImagesSummary> {
  let tree;
  try {
    tree = await readTreeDir(dir);
  } catch (err) {
    throw new PredumpError('EIMAGE', (err as Error).message, { cause: err });
  }
  const s = await summarize(dir, tree.dir);
  const root = tree.processes[0];
  const all = [...tree.processes, ...tree.shmem];
  const root1 = root
    ? await readPreDumpDir(dir, { pid: root.pid }).catch(() => undefined)
    : undefined;
  return {
    ...s,
    pid: root?.pid,
    entries: (root1?.entries ?? []).map((e) => ({ ...e, flagNames: flagNames(e.flags) })),
    pagesPresent: all.reduce((n, p) => n + p.pagesPresent, 0),
    pagesInParent: all.reduce((n, p) => n + p.pagesInParent, 0),
    pagesFileBytes: all.reduce((n, p) => n + (p.pagesFileBytes ?? 0), 0),
    processes: tree.processes.map((p) => ({
      pid: p.pid,
      pagesId: p.pagesId,
      entries: p.entries.length,
      pagesPresent: p.pagesPresent,
      pagesInParent: p.pagesInParent,
    })),
    sharedMemory: tree.shmem.map((p) => ({
      shmid: p.shmid,
      pagesId: p.pagesId,
      entries: p.entries.length,
      pagesPresent: p.pagesPresent,
      pagesInParent: p.pagesInParent,
    })),
  };
}

/**
 * The local half of a pre-dump or dump sent to a page server: inventory, stats and parent
 * link from the directory, the pagemaps as predump's record says they were sent.
 */
async function describeSent(dir: string, sent: SentRecord): Promise<ImagesSummary> {
  let d;
  try {
    d = await readPreDumpDir(dir, { pagesElsewhere: true });
  } catch (err) {
    throw new PredumpError('EIMAGE', (err as Error).message, { cause: err });
  }
  const record = await readRecord(dir);
  const entries = (flat: number[]) => {
    const out: ImagesSummary['entries'] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const [vaddr, nrPages, flags] = [flat[i]!, flat[i + 1]!, flat[i + 2]!];
      out.push({ vaddr, nrPages, flags, flagNames: flagNames(flags) });
    }
    return out;
  };
  const count = (es: ImagesSummary['entries'], bit: number): number =>
    es.filter((e) => e.flags & bit).reduce((n, e) => n + e.nrPages, 0);
  const root = entries(sent.entries);
  const processes = (sent.processes ?? []).map((p) => {
    const es = entries(p.entries);
    return {
      pid: p.pid,
      pagesId: 0,
      entries: es.length,
      pagesPresent: count(es, PE_PRESENT),
      pagesInParent: count(es, PE_PARENT),
    };
  });
  const s = await summarize(dir, { ...d, pid: record?.pid, entries: [] });
  return {
    ...s,
    entries: root,
    pagesPresent: processes.length
      ? processes.reduce((n, p) => n + p.pagesPresent, 0)
      : count(root, PE_PRESENT),
    pagesInParent: processes.length
      ? processes.reduce((n, p) => n + p.pagesInParent, 0)
      : count(root, PE_PARENT),
    pagesFileBytes: undefined,
    ...(processes.length > 1 ? { processes } : {}),
    pageServer: { address: sent.address, port: sent.port },
  };
}
