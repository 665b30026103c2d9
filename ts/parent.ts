/**
 * The parent of an iterative pre-dump: a complete image directory of the same
 * process, and the pages its chain holds (which the new images may leave to it as
 * PE_PARENT entries), and the dirty-tracking generation that made it.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from './errors.js';
import { PE_PARENT, readPreDumpDir } from './images/index.js';
import { native } from './native.js';

/** predump's own record in an images directory: which tracking run made it. */
export const TRACK_FILE = 'predump-track.json';

export interface TrackRecord {
  pid: number;
  /** The name of the arming of the target's dirty tracking made by this pre-dump. */
  generation: string;
  trackMem: string;
  /** Made by `predump dump`: the last of its chain. */
  final?: boolean;
}

export interface Parent {
  dir: string;
  /** The pages the chain holds, as [vaddr, nrPages] pairs. */
  pages: Float64Array;
  pageCount: number;
  /** Absent when the parent was made without tracking (or by CRIU). */
  generation?: string;
}

/** Checks `dir` as the parent of a pre-dump of `pid` started at `startTicks`. */
export async function openParent(dir: string, pid: number, startTicks: number): Promise<Parent> {
  const abs = path.resolve(dir);
  let d;
  try {
    d = await readPreDumpDir(abs);
  } catch (err) {
    throw new PredumpError(
      'EPARENT',
      `parent images ${dir} are corrupt: ${(err as Error).message}`,
    );
  }
  if (!d.complete) {
    throw new PredumpError('EPARENT', `parent images ${dir} are incomplete (no inventory.img)`);
  }
  if (d.pid !== pid) {
    throw new PredumpError(
      'EPARENT',
      `parent images ${dir} were made for process ${d.pid ?? '?'}, not ${pid}`,
    );
  }
  // The same pid, but a process that started after the parent was made: the pid
  // was reused, and the parent's pages belong to a process that is gone.
  const startedUs = (startTicks / native.clockTicksPerSecond()) * 1e6;
  const madeUs = Number(d.inventory?.dumpUptime ?? 0);
  if (madeUs === 0 || startedUs > madeUs) {
    throw new PredumpError(
      'EPARENT',
      `parent images ${dir} were made for an earlier process with pid ${pid} ` +
        `(made ${(madeUs / 1e6).toFixed(2)} s after boot, this process started at ${(startedUs / 1e6).toFixed(2)} s): the pid was reused`,
    );
  }
  // A parent whose own entries point further up must have that link: a chain
  // broken there holds nothing for those pages.
  if (d.entries.some((e) => e.flags & PE_PARENT)) {
    if (d.parent === undefined) {
      throw new PredumpError(
        'EPARENT',
        `parent images ${dir} refer to a parent of their own but have no 'parent' link`,
      );
    }
    const grand = await readPreDumpDir(path.resolve(abs, d.parent)).catch(() => undefined);
    if (!grand?.complete) {
      throw new PredumpError(
        'EPARENT',
        `the chain of ${dir} is broken: its parent ${d.parent} is missing or incomplete`,
      );
    }
  }
  const record = await readFile(path.join(abs, TRACK_FILE), 'utf8').then(
    (t) => JSON.parse(t) as TrackRecord,
    () => undefined,
  );
  return {
    dir: abs,
    pages: new Float64Array(d.entries.flatMap((e) => [e.vaddr, e.nrPages])),
    pageCount: d.entries.reduce((n, e) => n + e.nrPages, 0),
    generation: record?.pid === pid ? record.generation : undefined,
  };
}
