/**
 * The report as text for a person: per workload, the modes side by side for
 * each kind of pre-dump; then the references, the goals and the notes.
 */
import { formatBytes } from '../cli/output.js';
import type { BenchReport, BenchRow } from './report.js';
import { digitsFor, formatStat, mapStat, type Stat } from './stats.js';

const MiB = 2 ** 20;

/** Columns of text, left-aligned, two spaces apart, a rule under the header. */
export function columns(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

/** The last line of a smaller benchmark's table: rounds, machine, load, duration. */
export function machineLine(
  runs: number,
  m: {
    cpus: number;
    kernel: string;
    loadAvgStart: number[];
    loadAvgEnd: number[];
    durationS: number;
  },
): string {
  return (
    `Medians [min–max] of ${runs} rounds; ${m.cpus} CPUs, Linux ${m.kernel}, ` +
    `load ${m.loadAvgStart.join(' ')} → ${m.loadAvgEnd.join(' ')}, ${m.durationS} s.`
  );
}

const percent = (rate: number): string => `${(rate * 100).toFixed(1).replace(/\.0$/, '')}%`;

/** What kind of pre-dump a row is. */
export function kindOf(r: Pick<BenchRow, 'iteration' | 'trackMem' | 'dirtyRate'>): string {
  if (r.iteration === 0) return r.trackMem === 'none' ? 'lone' : `first, ${r.trackMem}`;
  return `+${percent(r.dirtyRate ?? 0)} #${r.iteration}`;
}

const ms = (s: Stat): string => formatStat(s, digitsFor(s.median));
const count = (s: Stat): string => formatStat(s, 0);

function written(r: BenchRow): string {
  if (r.pagesDirtied === null || r.dataPagesWritten === null) return count(r.pagesWritten);
  const extra = r.pagesWritten.median - r.dataPagesWritten.median;
  return `${r.dataPagesWritten.median.toFixed(0)} + ${extra.toFixed(0)}`;
}

function vsDirtied(r: BenchRow): string {
  if (r.pagesDirtied === null || r.dataPagesWritten === null) return '';
  if (r.pagesDirtied.median === 0) return `${r.pagesDirtied.median.toFixed(0)} dirtied`;
  return `${r.pagesDirtied.median.toFixed(0)} → ${(r.dataPagesWritten.median / r.pagesDirtied.median).toFixed(3)}`;
}

const HEADER = [
  'pre-dump',
  'mode',
  'frozen ms',
  'drain ms',
  'total ms',
  '× memcpy',
  'MB/s',
  'written (data + other)',
  'dirtied → ratio',
  'pinned MiB',
  'peak RSS MiB',
  'workload speed',
];

function rowCells(r: BenchRow): string[] {
  return [
    kindOf(r),
    r.mode + (r.fallback ? ' (→ read)' : ''),
    ms(r.frozenMs),
    ms(r.drainMs),
    ms(r.totalMs),
    r.xMemcpy ? formatStat(r.xMemcpy, 2) : '–',
    formatStat(r.throughputMBps, 0),
    written(r),
    vsDirtied(r),
    formatStat(
      mapStat(r.pinnedBytes, (b) => b / MiB),
      0,
    ),
    formatStat(
      mapStat(r.peakRssBytes, (b) => b / MiB),
      0,
    ),
    formatStat(r.workloadSpeed, 2),
  ];
}

export function renderTable(report: BenchReport): string {
  const m = report.machine;
  const out: string[] = [
    `predump bench: ${m.cpus} CPUs (${m.cpuModel}), ${formatBytes(m.memTotalBytes)}, ` +
      `Linux ${m.kernel} ${m.arch}; images in ${m.imagesDir} (${m.imagesFs})`,
    `${report.plan.runs} run(s) of each, modes alternating; median [min–max]; frozen = the ` +
      'time any thread of the workload was stopped',
    `load average ${m.loadAvgStart.join(' ')} at the start` +
      (m.cpuBusyStart === null ? '' : ` (CPUs ${(m.cpuBusyStart * 100).toFixed(0)}% busy)`) +
      `, ${m.loadAvgEnd.join(' ')} at the end; ${(m.durationS / 60).toFixed(1)} min`,
  ];
  const sections = new Map<string, BenchRow[]>();
  for (const r of report.runs) {
    const k = `${formatBytes(r.sizeBytes)}, ${r.threads} compute thread${r.threads === 1 ? '' : 's'}, churn ${r.churn ? 'on' : 'off'}`;
    sections.set(k, [...(sections.get(k) ?? []), r]);
  }
  for (const [title, rows] of sections) {
    out.push('', `== ${title}`, ...columns(HEADER, rows.map(rowCells)));
  }

  const sizes = Object.keys(report.reference.memcpyMs);
  if (sizes.length > 0) {
    const ref = report.reference;
    out.push(
      '',
      '== references, same run (the bytes of a full pre-dump)',
      ...columns(
        ['size', 'memcpy ms', 'memcpy fresh ms', 'process_vm_readv ms', 'write ms'],
        sizes.map((k) => [
          formatBytes(Number(k)),
          ms(ref.memcpyMs[k]!),
          ms(ref.memcpyFreshMs[k]!),
          ms(ref.pvrMs[k]!),
          ms(ref.writeMs[k]!),
        ]),
      ),
    );
  }

  out.push('', '== goals');
  for (const g of report.goals) {
    const status = g.met === null ? 'not run' : g.met ? 'met   ' : 'MISSED';
    out.push(`${status}  ${g.goal}`, `        ${g.detail}`);
  }
  if (report.skipped.length + report.notes.length > 0) {
    out.push('', '== notes');
    for (const n of report.notes) out.push(`- ${n}`);
  }
  out.push(
    '',
    'pre-dump: lone = without dirty tracking; first = the first of a chain, arming the tracking;',
    '  +R% #k = the k-th incremental pre-dump after the workload rewrote R% of its data.',
    'written: pages in the data the workload rewrote + its other pages (stacks, heap, churn);',
    '  dirtied → ratio: pages it rewrote, and data pages written ÷ those.',
    '× memcpy: total ÷ the median memcpy of the same size. workload speed: its compute rate',
    "  during the pre-dump ÷ just before (1 = not slowed down). peak RSS: a pre-dump process's",
    "  (the bench's size at its start + its growth during that pre-dump).",
  );
  return out.join('\n') + '\n';
}
