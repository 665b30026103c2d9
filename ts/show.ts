/**
 * A description of an images directory, for `predump show` and the API.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from './errors.js';
import {
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  PRE_DUMP_MODE,
  readPreDumpDir,
  type DumpStats,
} from './images/index.js';

export interface ImagesSummary {
  dir: string;
  /** inventory.img is there: the set was finished. */
  complete: boolean;
  kind?: 'pre-dump' | 'dump';
  mode?: 'read' | 'splice';
  pid?: number;
  dumpUptimeUs?: number;
  parent?: string;
  entries: { vaddr: number; nrPages: number; flags: number; flagNames: string[] }[];
  pagesPresent: number;
  pagesInParent: number;
  pagesFileBytes?: number;
  stats?: DumpStats;
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
  let d;
  try {
    d = await readPreDumpDir(dir);
  } catch (err) {
    throw new PredumpError('EIMAGE', (err as Error).message, { cause: err });
  }
  const mode =
    d.inventory?.preDumpMode === PRE_DUMP_MODE.read
      ? 'read'
      : d.inventory?.preDumpMode === PRE_DUMP_MODE.splice
        ? 'splice'
        : undefined;
  const sum = (bit: number): number =>
    d.entries.filter((e) => e.flags & bit).reduce((n, e) => n + e.nrPages, 0);
  return {
    dir: path.resolve(dir),
    complete: d.complete,
    kind: d.inventory ? (d.inventory.preDumpMode ? 'pre-dump' : 'dump') : undefined,
    mode,
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
