/**
 * Verifying a process tree's images against the live tree (`predump verify -t ROOT -D DIR`
 * on a tree's directory): each process's chain as `verifyChain` does it (that process
 * frozen meanwhile), and each anonymous shared memory object's chain against the object,
 * read by offset through one live mapping; the object's chain resolved as CRIU's restore
 * resolves it (a PE_PARENT entry leads to the parent directory's pagemap of the object, and a
 * page no entry there covers is not in the chain). An object is written by every process mapping it:
 * the comparison is exact only while the whole tree is stopped.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fromNative, PredumpError } from './errors.js';
import { PE_PARENT, PE_PRESENT, pagesFileName, readTreeDir, type TreeDir } from './images/index.js';
import { native } from './native.js';
import { listTree } from './tree.js';
import { verifyChain, type VerifyResult } from './verify.js';

/** One shared memory object's verification. */
export interface ShmemVerifyResult {
  shmid: number;
  /** The directories of its chain, newest first. */
  chain: string[];
  pagesCompared: number;
  mismatches: number;
  /** Offsets of the first mismatching pages. */
  firstMismatches: string[];
  notInChain: number;
  unreadable: number;
  /** Pages the object holds that the chain does not. */
  missing: number;
}

export interface TreeVerifyResult {
  root: number;
  imagesDir: string;
  processes: VerifyResult[];
  sharedMemory: ShmemVerifyResult[];
  /** Processes of the live tree that the images do not hold. */
  notInImages: number[];
  /** Processes (and shared objects) the images hold that are gone now. */
  gone: number[];
  goneSharedMemory: number[];
  pagesCompared: number;
  mismatches: number;
  notInChain: number;
  unreadable: number;
  missing: number;
  rseqOnly: number;
}

const flat = (entries: { vaddr: number; nrPages: number }[]): Float64Array =>
  new Float64Array(entries.flatMap((e) => [e.vaddr, e.nrPages]));

/** The live mappings of object `shmid` among `pids`: one to read it through, and its size. */
async function liveObject(
  shmid: number,
  pids: number[],
): Promise<{ pid: number; start: number; end: number; size: number } | undefined> {
  let found: { pid: number; start: number; end: number; size: number } | undefined;
  for (const pid of pids) {
    const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    for (const line of maps.split('\n')) {
      const f = line.split(/\s+/);
      if (f.length < 5 || f[1]?.[3] !== 's' || Number(f[4]) !== shmid) continue;
      const [start, end] = f[0]!.split('-').map((x) => parseInt(x, 16)) as [number, number];
      const size = parseInt(f[2]!, 16) + (end - start);
      found ??= { pid, start, end, size };
      found.size = Math.max(found.size, size);
    }
  }
  return found;
}

/** Compares a tree's image chain ending at `dir` with the live tree of `root`. */
export async function verifyTree(root: number, dir: string): Promise<TreeVerifyResult> {
  const read = (at: string): Promise<TreeDir> =>
    readTreeDir(at).catch((err: Error) => {
      throw new PredumpError('EIMAGE', `cannot read ${at}: ${err.message}`);
    });
  const newest = await read(dir);
  if (!newest.dir.complete) {
    throw new PredumpError('EIMAGE', `${dir} is incomplete (no inventory.img)`);
  }
  const imaged = newest.processes.map((p) => p.pid);
  if (!imaged.includes(root)) {
    throw new PredumpError(
      'EINVAL',
      `${dir} holds processes ${imaged.join(', ')}, not ${root}: give the tree's root`,
    );
  }
  const live = (await listTree(root)).members.map((m) => m.pid);
  const processes: VerifyResult[] = [];
  const gone: number[] = [];
  for (const pid of imaged) {
    if (!live.includes(pid)) {
      gone.push(pid);
      continue;
    }
    processes.push(await verifyChain(pid, dir));
  }
  // Each object's chain: its pagemap in each directory, through the parent links.
  const dirs: { dir: string; tree: TreeDir }[] = [];
  let at: string | undefined = path.resolve(dir);
  const seen = new Set<string>();
  while (at !== undefined && !seen.has(at)) {
    seen.add(at);
    const t: TreeDir | undefined = await readTreeDir(at).catch(() => undefined);
    if (!t?.dir.complete) break;
    dirs.push({ dir: at, tree: t });
    at = t.dir.parent === undefined ? undefined : path.resolve(at, t.dir.parent);
  }
  const sharedMemory: ShmemVerifyResult[] = [];
  const goneSharedMemory: number[] = [];
  for (const o of newest.shmem) {
    const obj = await liveObject(o.shmid, live);
    if (obj === undefined) {
      goneSharedMemory.push(o.shmid);
      continue;
    }
    // As CRIU's restore reads it: the object's pagemap in each directory down the parent links,
    // up to the first directory without one (a PE_PARENT entry above it leads nowhere).
    const chain: { dir: string; pagesId: number; entries: TreeDir['shmem'][number]['entries'] }[] =
      [];
    for (const { dir: d, tree } of dirs) {
      const s = tree.shmem.find((x) => x.shmid === o.shmid);
      if (!s) break;
      chain.push({ dir: d, pagesId: s.pagesId, entries: s.entries });
    }
    const r = await native
      .verifyShmem(
        { shmid: o.shmid, size: obj.size, pid: obj.pid, start: obj.start, end: obj.end },
        chain.map((c) => ({
          pagesPath: path.join(c.dir, pagesFileName(c.pagesId)),
          entries: new Float64Array(c.entries.flatMap((e) => [e.vaddr, e.nrPages, e.flags])),
        })),
        flat(o.entries.filter((e) => e.flags & (PE_PRESENT | PE_PARENT))),
      )
      .catch((err: unknown) => {
        throw fromNative(err);
      });
    sharedMemory.push({
      shmid: o.shmid,
      chain: chain.map((c) => c.dir),
      pagesCompared: r.pagesCompared,
      mismatches: r.mismatches,
      firstMismatches: r.firstMismatches.map((a) => `0x${a.toString(16)}`),
      notInChain: r.notInChain,
      unreadable: r.unreadable,
      missing: r.missing,
    });
  }
  const all = [...processes, ...sharedMemory];
  const sum = (k: 'pagesCompared' | 'mismatches' | 'notInChain' | 'unreadable' | 'missing') =>
    all.reduce((n, r) => n + r[k], 0);
  return {
    root,
    imagesDir: path.resolve(dir),
    processes,
    sharedMemory,
    notInImages: live.filter((p) => !imaged.includes(p)),
    gone,
    goneSharedMemory,
    pagesCompared: sum('pagesCompared'),
    mismatches: sum('mismatches'),
    notInChain: sum('notInChain'),
    unreadable: sum('unreadable'),
    missing: sum('missing'),
    rseqOnly: processes.reduce((n, r) => n + r.rseqOnly, 0),
  };
}
