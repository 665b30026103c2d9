/**
 * `predump show DIR`: what an images directory holds.
 */
import type { Argv } from 'yargs';
import { EXIT } from '../errors.js';
import { describeImages, type ImagesSummary } from '../show.js';
import { formatBytes, printJson, reportError, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'show <dir>';
export const describe = 'Decode an images directory: entries, page counts, stats, parent';

export function builder(yargs: Argv) {
  return yargs
    .positional('dir', { type: 'string', demandOption: true, describe: 'images directory' })
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'print one JSON object on stdout',
    })
    .option('entries', {
      type: 'boolean',
      default: true,
      describe: 'list every pagemap entry (--no-entries for the totals only)',
    })
    .example('predump show /tmp/img', 'summary and pagemap entries')
    .example('predump show /tmp/img --json | jq .pagesPresent', 'for scripts');
}

export async function handler(args: Args): Promise<void> {
  try {
    const summary = await describeImages(args.dir);
    if (args.json) printJson(summary);
    else process.stdout.write(render(summary, args.entries));
    process.exitCode = EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}

function render(s: ImagesSummary, withEntries: boolean): string {
  const lines = [
    `${s.dir}: ${s.complete ? 'complete' : 'INCOMPLETE (no inventory.img)'} ${s.kind ?? ''}`.trimEnd(),
  ];
  if (s.pid !== undefined) lines.push(`  pid            ${s.pid}`);
  if (s.mode !== undefined) lines.push(`  pre-dump mode  ${s.mode}`);
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
      `                 pages scanned ${t.pagesScanned}, written ${t.pagesWritten}, skipped (parent) ${t.pagesSkippedParent}`,
    );
  }
  if (withEntries && s.entries.length > 0) {
    lines.push('  vaddr              pages  flags');
    for (const e of s.entries) {
      lines.push(
        `  ${('0x' + e.vaddr.toString(16)).padEnd(18)} ${String(e.nrPages).padStart(6)}  ${e.flagNames.join('|')}`,
      );
    }
  }
  return lines.join('\n') + '\n';
}
