/**
 * `predump show DIR`: what an images directory holds.
 */
import type { Argv } from 'yargs';
import { EXIT } from '../errors.js';
import type { CommandSpec } from './fast-args.js';
import { exitStatusHelp, STATUS } from './options.js';
import type { ImagesSummary } from '../show.js';
import { formatBytes, printJson, reportError, write, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

const options = {
  json: {
    type: 'boolean',
    default: false,
    describe: 'print one JSON object on stdout',
  },
  entries: {
    type: 'boolean',
    default: true,
    describe: 'list every pagemap entry (--no-entries for the totals only)',
  },
} as const;

export const spec: CommandSpec = { options, positionals: ['dir'] };

export function builder(yargs: Argv) {
  return yargs
    .positional('dir', { type: 'string', demandOption: true, describe: 'images directory' })
    .options(options)
    .epilogue(
      exitStatusHelp([
        ['0', 'shown (a set without inventory.img is shown as INCOMPLETE)'],
        ['1', 'not an images directory, or an image that does not decode'],
        STATUS.usage,
      ]),
    )
    .example('predump show /tmp/img', 'summary and pagemap entries')
    .example('predump show /tmp/img --json | jq .pagesPresent', 'for scripts');
}

export async function handler(args: Args): Promise<void> {
  try {
    const { describeImages } = await import('../show.js');
    const summary = await describeImages(args.dir);
    if (args.json) printJson({ ok: true, ...summary });
    else write(process.stdout, render(summary, args.entries));
    process.exitCode = EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}

function render(s: ImagesSummary, withEntries: boolean): string {
  const lines = [
    `${s.dir}: ${s.complete ? 'complete' : 'INCOMPLETE (no inventory.img)'} ${s.kind ?? ''}`.trimEnd(),
  ];
  if (s.complete) lines.push(`  made by        ${madeBy(s)}`);
  if (s.pageServer) {
    lines.push(
      `  pages sent to  the page server at ${s.pageServer.address}:${s.pageServer.port}: ` +
        'the pagemaps and pages are there; below, what was sent (predump-track.json)',
    );
  }
  if (s.processes) {
    lines.push(
      `  processes      ${s.processes.length} (a process tree; root ${s.pid ?? '?'}, the first below)`,
    );
    for (const p of s.processes) {
      lines.push(
        `    pid ${String(p.pid).padEnd(10)} ${p.pagesId ? `pages-${p.pagesId}.img` : 'on the server'}  ${p.entries} entries, ${p.pagesPresent} pages present` +
          (p.pagesInParent > 0 ? `, ${p.pagesInParent} in the parent` : ''),
      );
    }
    for (const o of s.sharedMemory ?? []) {
      lines.push(
        `    shmem ${String(o.shmid).padEnd(8)} pages-${o.pagesId}.img  ${o.entries} entries, ${o.pagesPresent} pages present (anonymous shared memory, by offset)` +
          (o.pagesInParent > 0 ? `, ${o.pagesInParent} in the parent` : ''),
      );
    }
  } else if (s.pid !== undefined) lines.push(`  pid            ${s.pid}`);
  if (s.dumpUptimeUs !== undefined)
    lines.push(`  dump uptime    ${(s.dumpUptimeUs / 1e6).toFixed(3)} s after boot`);
  lines.push(`  entries        ${s.entries.length}`);
  lines.push(`  pages present  ${s.pagesPresent} (${formatBytes(s.pagesPresent * 4096)})`);
  if (s.pagesInParent > 0) lines.push(`  pages parent   ${s.pagesInParent}`);
  if (s.parent !== undefined) lines.push(`  parent         ${s.parent}`);
  if (s.stats) {
    const t = s.stats;
    lines.push(
      `  stats          frozen ${t.frozenTime} µs, freezing ${t.freezingTime} µs, memdump ${t.memdumpTime} µs, memwrite ${t.memwriteTime} µs`,
      `                 (${memTimesMeaning(s)})`,
      `                 pages scanned ${t.pagesScanned}, written ${t.pagesWritten}, skipped (parent) ${t.pagesSkippedParent}`,
    );
  }
  if (withEntries && s.entries.length > 0) {
    if (s.processes) lines.push(`  entries of the root, ${s.pid ?? '?'}:`);
    lines.push('  vaddr              pages  flags');
    for (const e of s.entries) {
      lines.push(
        `  ${('0x' + e.vaddr.toString(16)).padEnd(18)} ${String(e.nrPages).padStart(6)}  ${e.flagNames.join('|')}`,
      );
    }
  }
  return lines.join('\n') + '\n';
}

/** What memdump and memwrite cover, as CRIU's stats mean them, for what made the images. */
function memTimesMeaning(s: ImagesSummary): string {
  if (s.kind === 'dump') {
    return 'memdump: the pages found, read and written while frozen; memwrite: the writing, part of it';
  }
  if (s.mode === 'splice') {
    return 'memdump: the pages found and put into pipes while frozen; memwrite: the pipes written after the thaw';
  }
  return s.mode === 'freeze-free'
    ? 'memdump: the pages found and read, memwrite: written, while the target ran'
    : 'memdump: the pages found while frozen and read after the thaw; memwrite: written after the thaw';
}

/** What made the images: the command, the mode, the tracking, as far as they say. */
function madeBy(s: ImagesSummary): string {
  if (s.kind === 'dump') {
    if (!s.trackingEnded) {
      return 'a final dump (frozen throughout; no predump record: criu dump, or an older predump)';
    }
    return s.tracking === 'none' || s.tracking === null
      ? 'predump dump (frozen throughout), without dirty tracking'
      : `predump dump (frozen throughout), which ended the ${s.tracking} tracking`;
  }
  const mode =
    s.mode === 'freeze-free'
      ? 'freeze-free mode (the target ran throughout)'
      : s.mode === 'splice'
        ? 'splice mode'
        : 'read mode';
  if (s.tracking === null) {
    return `a pre-dump in ${mode}, without predump's record (criu pre-dump, or predump without dirty tracking)`;
  }
  return `predump pre-dump in ${mode}, ${s.tracking === 'none' ? 'no' : s.tracking} dirty tracking`;
}
