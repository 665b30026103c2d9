/**
 * The parent of an iterative pre-dump: a complete image directory of the same
 * process, made by predump or by CRIU, and the pages its chain holds (which the
 * new images may leave to it as PE_PARENT entries).
 *
 * `--prev-images-dir` is CRIU's: a relative path is relative to the new images
 * directory (-D), as CRIU makes the `parent` link with the path as given. Every
 * way a parent can be wrong for this process is refused here (EPARENT), before
 * anything is written: made for another process, for an earlier process with the
 * same pid, before the last reboot, or a chain broken somewhere up its links.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from './errors.js';
import {
  INVENTORY_FILE,
  PE_PARENT,
  readPreDumpDir,
  type PagemapEntry,
  type PreDumpDir,
  TRACK_FILE,
  whoseImages,
} from './images/index.js';
import { native } from './native.js';

export { TRACK_FILE };

export interface TrackRecord {
  pid: number;
  /** The name of the arming of the target's dirty tracking made by this pre-dump. */
  generation: string;
  trackMem: string;
  /** Made by `predump dump`: the last of its chain. */
  final?: boolean;
  /** The boot the images were made in (/proc/sys/kernel/random/boot_id). */
  bootId?: string;
  /** The mode the pages were taken in (freeze-free reads as read mode in the inventory). */
  mode?: string;
  /**
   * The pages went to this page server; the pagemap it was sent (flat
   * [vaddr, nrPages, flags] triples) stays here for the next pre-dump, which
   * needs to know what the chain holds (CRIU's client keeps none).
   */
  pageServer?: {
    address: string;
    port: number;
    dumpUptimeUs: number;
    entries: number[];
    /**
     * A process tree's pre-dump: every process's pagemap sent, likewise (`entries` above
     * is the root's).
     */
    processes?: { pid: number; entries: number[] }[];
  };
  /**
   * A tree's anonymous shared memory objects written here, each with its identity (its file
   * handle: inode number and generation): a pre-dump on these images compares an object with
   * its pages here only if it is the object recorded under its shmid (see the core's
   * shmem_chain).
   */
  shmem?: { shmid: number; identity: string }[];
}

export interface Parent {
  dir: string;
  /** The pages the chain holds, as [vaddr, nrPages] pairs. */
  pages: Float64Array;
  pageCount: number;
  /**
   * The arming of the tracking that made it; absent when the parent was made without
   * tracking or by CRIU (then only soft-dirty can trust it: see the core's `distrust`).
   */
  generation?: string;
  /** When the parent's target was frozen: its dump_uptime, µs after boot. */
  madeUs: number;
  /** Its pages went to a page server: only a pre-dump to a page server can build on it. */
  pageServer: boolean;
}

/** This boot's id: a parent recording another one is from before a reboot. */
export async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}

/**
 * Checks the parent named by `given` (a relative path is relative to `imagesDir`)
 * for a pre-dump of `pid` started at `startTicks` (clock ticks after boot).
 */
/** How far a parent's dump_uptime may lie ahead of /proc/uptime's coarser clock. */
const UPTIME_SLACK_US = 1e6;

export async function openParent(
  given: string,
  imagesDir: string,
  pid: number,
  startTicks: number,
): Promise<Parent> {
  const abs = path.resolve(path.resolve(imagesDir), given);
  const refuse = (why: string): PredumpError =>
    new PredumpError('EPARENT', `parent images ${given} ${why}`);
  const record = await readFile(path.join(abs, TRACK_FILE), 'utf8').then(
    (t) => JSON.parse(t) as TrackRecord,
    () => undefined,
  );
  if (record?.pageServer) return sentParent(abs, record, refuse, pid, startTicks);
  const d = await readDir(abs, refuse, given === abs ? '' : ` (${abs})`, pid);
  if (d.pid !== pid) throw refuse(`were made for ${whoseImages(d)}, not ${pid}`);

  // The boot, then the process: dump_uptime counts from the boot.
  const madeUs = Number(d.inventory?.dumpUptime ?? 0);
  const boot = await bootId();
  if (record?.bootId !== undefined && record.bootId !== boot) {
    throw refuse(`were made before the last reboot (boot ${record.bootId}; this one is ${boot})`);
  }
  const nowUs = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]) * 1e6;
  // /proc/uptime counts in hundredths of a second, dump_uptime in microseconds: a parent
  // made within the same hundredth reads as made "later" than now. A reboot puts far more
  // than a second between the two (and the boot id, where recorded, says it exactly).
  if (madeUs > nowUs + UPTIME_SLACK_US) {
    throw refuse(
      `were made before the last reboot (${secs(madeUs)} s after a boot; this one is ${secs(nowUs)} s old)`,
    );
  }
  const bootMs = Date.now() - nowUs / 1e3;
  const written = (await stat(path.join(abs, INVENTORY_FILE))).mtimeMs;
  if (written < bootMs - 2000) {
    throw refuse(
      `were made before the last reboot (written ${new Date(written).toISOString()}; ` +
        `this boot began ${new Date(bootMs).toISOString()})`,
    );
  }
  // The same pid, but a process that started after the parent was made: the pid
  // was reused, and the parent's pages belong to a process that is gone. (CRIU's
  // own test, in detect_pid_reuse.)
  const startedUs = (startTicks / native.clockTicksPerSecond()) * 1e6;
  if (madeUs === 0 || startedUs > madeUs) {
    throw refuse(
      `were made for an earlier process with pid ${pid} ` +
        `(made ${secs(madeUs)} s after boot, this process started at ${secs(startedUs)} s): the pid was reused`,
    );
  }
  await checkChain(abs, d, pid, given);
  return {
    dir: abs,
    pages: new Float64Array(d.entries.flatMap((e) => [e.vaddr, e.nrPages])),
    pageCount: d.entries.reduce((n, e) => n + e.nrPages, 0),
    generation: record?.pid === pid ? record.generation : undefined,
    madeUs,
    pageServer: false,
  };
}

/**
 * The local half of a pre-dump sent to a page server (inventory, stats, and
 * the record of the pagemap sent): the server holds the pages, and answers
 * for them when asked (PS_IOV_PARENT); here the record says what they are.
 */
async function sentParent(
  abs: string,
  record: TrackRecord,
  refuse: (why: string) => PredumpError,
  pid: number,
  startTicks: number,
): Promise<Parent> {
  const sent = record.pageServer!;
  if (!(await stat(path.join(abs, INVENTORY_FILE)).catch(() => undefined))) {
    throw refuse('are incomplete (no inventory.img)');
  }
  // A tree's pre-dump sent every process's pagemap: this process's, if it was one of them.
  const mine =
    record.pid === pid ? sent.entries : sent.processes?.find((p) => p.pid === pid)?.entries;
  if (mine === undefined) {
    const pids = sent.processes?.map((p) => p.pid) ?? [record.pid];
    throw refuse(
      `were made for process${pids.length > 1 ? 'es' : ''} ${pids.join(', ')}, not ${pid}`,
    );
  }
  const boot = await bootId();
  if (record.bootId !== undefined && record.bootId !== boot) {
    throw refuse(`were made before the last reboot (boot ${record.bootId}; this one is ${boot})`);
  }
  const madeUs = sent.dumpUptimeUs;
  const startedUs = (startTicks / native.clockTicksPerSecond()) * 1e6;
  if (!(madeUs > 0) || startedUs > madeUs) {
    throw refuse(
      `were made for an earlier process with pid ${pid} ` +
        `(made ${secs(madeUs)} s after boot, this process started at ${secs(startedUs)} s): the pid was reused`,
    );
  }
  const pages: number[] = [];
  let pageCount = 0;
  for (let i = 0; i + 2 < mine.length; i += 3) {
    pages.push(mine[i]!, mine[i + 1]!);
    pageCount += mine[i + 1]!;
  }
  return {
    dir: abs,
    pages: new Float64Array(pages),
    pageCount,
    generation: record.generation,
    madeUs,
    pageServer: true,
  };
}

const secs = (us: number): string => (us / 1e6).toFixed(2);

/**
 * A complete images directory, or the reason it is not one; `pid`: the process to read if
 * it is a process tree's (a chain may go from one process to its tree and back, as children
 * come and go).
 */
async function readDir(
  dir: string,
  refuse: (why: string) => PredumpError,
  where: string,
  pid?: number,
): Promise<PreDumpDir> {
  const st = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') {
      throw refuse(
        `do not exist${where}` +
          (where
            ? ': a relative --prev-images-dir is relative to the images directory (-D), as in CRIU'
            : ''),
      );
    }
    throw refuse(`cannot be read${where}: ${err.message}`);
  });
  if (!st.isDirectory()) throw refuse(`are not a directory${where}`);
  let d: PreDumpDir;
  try {
    d = await readPreDumpDir(dir, pid === undefined ? {} : { inTree: pid });
  } catch (err) {
    throw refuse(`are corrupt${where}: ${(err as Error).message}`);
  }
  if (!d.complete) throw refuse(`are incomplete${where} (no inventory.img)`);
  return d;
}

/**
 * Every link of the chain that holds pages for the one below it: present,
 * complete, of the same process, and holding every page the link below leaves to
 * it (what CRIU checks when it writes a hole, check_pagehole_in_parent, and what
 * restoring needs). Each link may be one process's or its tree's (`pid`'s pagemap read).
 */
export async function checkChain(
  top: string,
  topDir: PreDumpDir,
  pid: number,
  given: string,
): Promise<void> {
  const seen = new Set([top]);
  let [dir, d] = [top, topDir];
  for (;;) {
    const holes = d.entries.filter((e) => e.flags & PE_PARENT);
    if (holes.length === 0) return;
    const name = dir === top ? given : dir;
    const broken = (why: string): PredumpError =>
      new PredumpError('EPARENT', `the chain of parent images ${given} is broken: ${why}`);
    if (d.parent === undefined) {
      throw new PredumpError(
        'EPARENT',
        `parent images ${name} refer to a parent of their own but have no 'parent' link`,
      );
    }
    const next = path.resolve(dir, d.parent);
    if (seen.has(next)) throw broken(`its 'parent' links loop at ${next}`);
    seen.add(next);
    const link = `the images ${next} (the parent of ${name})`;
    const nd = await readDir(next, (why) => broken(`${link} ${why}`), '', pid);
    if (nd.pid !== pid) throw broken(`${link} were made for ${whoseImages(nd)}, not ${pid}`);
    const missing = uncovered(holes, nd.entries);
    if (missing !== undefined) {
      throw broken(
        `${name} leaves page 0x${missing.toString(16)} to ${link}, which do not hold it`,
      );
    }
    [dir, d] = [next, nd];
  }
}

/** The first page of `holes` that no entry of `parent` covers (both sorted). */
function uncovered(holes: PagemapEntry[], parent: PagemapEntry[]): number | undefined {
  const PAGE = 4096;
  let j = 0;
  for (const h of holes) {
    let at = h.vaddr;
    const end = h.vaddr + h.nrPages * PAGE;
    while (at < end) {
      while (j < parent.length && parent[j]!.vaddr + parent[j]!.nrPages * PAGE <= at) j++;
      const p = parent[j];
      if (p === undefined || p.vaddr > at) return at;
      at = Math.min(end, p.vaddr + p.nrPages * PAGE);
    }
  }
  return undefined;
}
