/**
 * The benchmark as an SVG chart, written by hand (no dependency): grouped bars
 * per size and mode, the median with a min–max whisker, on logarithmic axes
 * (the stopped time is milliseconds, the total hundreds of them). Panels: the
 * first pre-dump's stopped and total time, and an incremental pre-dump's;
 * memcpy of the same size and the goals drawn where they apply.
 */
import { formatBytes } from '../cli/output.js';
import type { BenchMode } from './plan.js';
import { CRIU_SPLICE_FROZEN_1G_MS, type BenchReport, type BenchRow } from './report.js';
import type { Stat } from './stats.js';

/** Colours told apart by colour-blind readers too (Okabe–Ito). */
export const MODE_COLORS: Record<BenchMode, string> = {
  read: '#0072b2',
  splice: '#d55e00',
  'freeze-free': '#009e73',
};

const WIDTH = 1000;
const PANEL_H = 290;
const TOP = 96;
const GAP = 24;
const AXIS_LEFT = 64;
const AXIS_BOTTOM = 44;
const PANEL_TITLE = 26;
const GiB = 2 ** 30;

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** 0.5, 3, 120, 2.4 s: a time for a bar label or an axis tick. */
export function formatTime(msValue: number): string {
  if (msValue >= 1000) return `${+(msValue / 1000).toPrecision(3)} s`;
  if (msValue >= 100) return `${Math.round(msValue)}`;
  return `${+msValue.toPrecision(2)}`;
}

interface Bar {
  mode: BenchMode;
  value: Stat | null;
  /** Short dashed lines across the bar: a goal at this value. */
  goal?: number;
}

interface Group {
  label: string;
  bars: Bar[];
  /** Horizontal references across the whole group (memcpy, 3× it), as the legend shows them. */
  marks: { value: number; style: LineStyle }[];
}

interface LineStyle {
  label: string;
  stroke: string;
  width: number;
  dash: string;
}

const MEMCPY: LineStyle = { label: 'memcpy, same size', stroke: '#333', width: 1.5, dash: '7 3' };
const MEMCPY3: LineStyle = { label: '3× memcpy (goal)', stroke: '#000', width: 1.5, dash: '2 2' };
const GOAL: LineStyle = { label: 'goal (1 GiB)', stroke: '#000', width: 2.5, dash: '4 2' };

function lineSample(x: number, y: number, st: LineStyle): string {
  return (
    `<line x1="${x}" x2="${x + 26}" y1="${y}" y2="${y}" stroke="${st.stroke}" stroke-width="${st.width}" stroke-dasharray="${st.dash}"/>` +
    `<text x="${x + 32}" y="${y + 4}" font-size="12">${escapeXml(st.label)}</text>`
  );
}

interface Panel {
  title: string;
  groups: Group[];
}

/** 256 MiB, 1 GiB, 4 GiB. */
export function sizeName(bytes: number): string {
  if (bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes % 2 ** 20 === 0) return `${bytes / 2 ** 20} MiB`;
  return formatBytes(bytes);
}

/** Log axis bounds: powers of ten around every positive value. */
function bounds(values: number[]): { lo: number; hi: number } {
  const pos = values.filter((v) => v > 0 && Number.isFinite(v));
  if (pos.length === 0) return { lo: 0.1, hi: 1000 };
  let lo = 10 ** Math.floor(Math.log10(Math.min(...pos)));
  let hi = 10 ** Math.ceil(Math.log10(Math.max(...pos)));
  if (hi <= lo) hi = lo * 10;
  if (hi / lo < 100) lo = hi / 100;
  return { lo, hi };
}

function panelSvg(p: Panel, x0: number, y0: number, w: number, h: number): string {
  const plotX = x0 + AXIS_LEFT;
  const plotY = y0 + PANEL_TITLE;
  const plotW = w - AXIS_LEFT - 8;
  const plotH = h - PANEL_TITLE - AXIS_BOTTOM;
  const values = p.groups.flatMap((g) => [
    ...g.bars.flatMap((b) => (b.value ? [b.value.min, b.value.max] : [])),
    ...g.bars.flatMap((b) => (b.goal !== undefined ? [b.goal] : [])),
    ...g.marks.map((m) => m.value),
  ]);
  const { lo, hi } = bounds(values);
  const y = (v: number): number =>
    plotY + plotH - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  const parts: string[] = [
    `<g class="panel">`,
    `<text x="${plotX}" y="${y0 + 16}" font-size="14" font-weight="bold">${escapeXml(p.title)}</text>`,
    `<rect x="${plotX}" y="${plotY}" width="${plotW}" height="${plotH}" fill="#fafafa" stroke="#999"/>`,
  ];
  // Ticks at powers of ten, faint lines at 2× and 5×.
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    const ty = y(d);
    parts.push(
      `<line x1="${plotX}" x2="${plotX + plotW}" y1="${ty}" y2="${ty}" stroke="#ccc"/>`,
      `<text x="${plotX - 6}" y="${ty + 4}" font-size="11" text-anchor="end">${formatTime(d)}</text>`,
    );
    for (const k of [2, 5]) {
      if (d * k < hi) {
        const ky = y(d * k);
        parts.push(
          `<line x1="${plotX}" x2="${plotX + plotW}" y1="${ky}" y2="${ky}" stroke="#eee"/>`,
        );
      }
    }
  }
  parts.push(
    `<text transform="translate(${x0 + 14} ${plotY + plotH / 2}) rotate(-90)" font-size="12" text-anchor="middle">ms (log scale)</text>`,
  );
  const groupW = plotW / Math.max(1, p.groups.length);
  p.groups.forEach((g, gi) => {
    const gx = plotX + gi * groupW;
    const n = Math.max(1, g.bars.length);
    const barW = Math.min(44, (groupW * 0.72) / n);
    const left = gx + (groupW - barW * n) / 2;
    parts.push(
      `<text x="${gx + groupW / 2}" y="${plotY + plotH + 18}" font-size="13" text-anchor="middle">${escapeXml(g.label)}</text>`,
    );
    g.bars.forEach((b, bi) => {
      const bx = left + bi * barW;
      const color = MODE_COLORS[b.mode];
      const cx = bx + barW / 2;
      if (b.value === null) {
        parts.push(
          `<text x="${cx}" y="${plotY + plotH - 4}" font-size="10" text-anchor="middle" fill="#666">n/a</text>`,
        );
        return;
      }
      const v = b.value;
      if (v.median <= 0) {
        // Not stopped at all: nothing to draw on a log scale, so say it.
        parts.push(
          `<text x="${cx}" y="${plotY + plotH - 4}" font-size="11" font-weight="bold" text-anchor="middle" fill="${color}">0</text>`,
        );
        return;
      }
      const top = y(Math.max(v.median, lo));
      parts.push(
        `<rect x="${bx + 2}" y="${top}" width="${barW - 4}" height="${plotY + plotH - top}" fill="${color}"><title>${escapeXml(
          `${b.mode}: median ${formatTime(v.median)} ms, min ${formatTime(v.min)}, max ${formatTime(v.max)}`,
        )}</title></rect>`,
      );
      if (v.max > v.min) {
        const y1 = y(Math.max(v.min, lo));
        const y2 = y(v.max);
        parts.push(
          `<line x1="${cx}" x2="${cx}" y1="${y1}" y2="${y2}" stroke="#222"/>`,
          `<line x1="${cx - 4}" x2="${cx + 4}" y1="${y1}" y2="${y1}" stroke="#222"/>`,
          `<line x1="${cx - 4}" x2="${cx + 4}" y1="${y2}" y2="${y2}" stroke="#222"/>`,
        );
      }
      parts.push(
        `<text x="${cx}" y="${Math.min(top, y(v.max)) - 4}" font-size="10" text-anchor="middle">${formatTime(v.median)}</text>`,
      );
      if (b.goal !== undefined) {
        const gy = y(b.goal);
        parts.push(
          `<line x1="${bx - 3}" x2="${bx + barW + 3}" y1="${gy}" y2="${gy}" stroke="${GOAL.stroke}" stroke-width="${GOAL.width}" stroke-dasharray="${GOAL.dash}"><title>goal: ${formatTime(b.goal)} ms</title></line>`,
        );
      }
    });
    for (const m of g.marks) {
      const my = y(m.value);
      parts.push(
        `<line x1="${gx + 6}" x2="${gx + groupW - 6}" y1="${my}" y2="${my}" stroke="${m.style.stroke}" stroke-width="${m.style.width}" stroke-dasharray="${m.style.dash}"><title>${escapeXml(`${m.style.label}: ${formatTime(m.value)} ms`)}</title></line>`,
      );
    }
  });
  parts.push('</g>');
  return parts.join('\n');
}

/** The rows a panel shows: the first workload configuration (threads, churn) of the run. */
function baseRows(report: BenchReport): BenchRow[] {
  const r0 = report.runs[0];
  if (!r0) return [];
  return report.runs.filter((r) => r.threads === r0.threads && r.churn === r0.churn);
}

export function renderChart(report: BenchReport): string {
  const rows = baseRows(report);
  const sizes = [...new Set(rows.map((r) => r.sizeBytes))].sort((a, b) => a - b);
  const modes = report.plan.modes.filter((m) => rows.some((r) => r.mode === m));
  const first = (mode: BenchMode, size: number): BenchRow | undefined =>
    rows.find(
      (r) =>
        r.mode === mode &&
        r.sizeBytes === size &&
        r.iteration === 0 &&
        (mode === 'freeze-free' ? r.trackMem !== 'none' : r.trackMem === 'none'),
    );
  const incRows = rows.filter((r) => r.iteration > 0);
  const rate = Math.max(...incRows.map((r) => r.dirtyRate ?? 0), 0);
  const iteration = Math.max(
    ...incRows.filter((r) => r.dirtyRate === rate).map((r) => r.iteration),
    0,
  );
  const inc = (mode: BenchMode, size: number): BenchRow | undefined =>
    incRows.find(
      (r) =>
        r.mode === mode &&
        r.sizeBytes === size &&
        r.dirtyRate === rate &&
        r.iteration === iteration,
    );
  const memcpy = (size: number): number | undefined =>
    report.reference.memcpyMs[String(size)]?.median;
  const frozenGoal = (mode: BenchMode, size: number): number | undefined =>
    size !== GiB
      ? undefined
      : mode === 'read'
        ? 5
        : mode === 'splice'
          ? 0.8 * CRIU_SPLICE_FROZEN_1G_MS
          : undefined;

  const panels: Panel[] = [
    {
      title: 'first pre-dump: target stopped',
      groups: sizes.map((size) => ({
        label: sizeName(size),
        bars: modes.map((mode) => {
          const goal = frozenGoal(mode, size);
          return {
            mode,
            value: first(mode, size)?.frozenMs ?? null,
            ...(goal !== undefined ? { goal } : {}),
          };
        }),
        marks: [],
      })),
    },
    {
      title: 'first pre-dump: total time',
      groups: sizes.map((size) => {
        const m = memcpy(size);
        return {
          label: sizeName(size),
          bars: modes.map((mode) => ({ mode, value: first(mode, size)?.totalMs ?? null })),
          marks:
            m === undefined
              ? []
              : [
                  { value: m, style: MEMCPY },
                  { value: 3 * m, style: MEMCPY3 },
                ],
        };
      }),
    },
  ];
  if (incRows.length > 0) {
    const what = `incremental #${iteration} after ${+(rate * 100).toFixed(1)}% dirtied`;
    panels.push(
      {
        title: `${what}: target stopped`,
        groups: sizes.map((size) => ({
          label: sizeName(size),
          bars: modes.map((mode) => ({ mode, value: inc(mode, size)?.frozenMs ?? null })),
          marks: [],
        })),
      },
      {
        title: `${what}: total time`,
        groups: sizes.map((size) => ({
          label: sizeName(size),
          bars: modes.map((mode) => ({ mode, value: inc(mode, size)?.totalMs ?? null })),
          marks: [],
        })),
      },
    );
  }

  const panelW = (WIDTH - GAP) / 2;
  const panelRows = Math.ceil(panels.length / 2);
  const height = TOP + panelRows * (PANEL_H + GAP) + 24;
  const m = report.machine;
  const r0 = rows[0];
  const config = r0
    ? `${r0.threads} compute thread${r0.threads === 1 ? '' : 's'}, churn ${r0.churn ? 'on' : 'off'}`
    : '';
  const subtitle =
    `${m.cpus} CPUs, ${formatBytes(m.memTotalBytes)}, Linux ${m.kernel}, images in ${m.imagesFs}, ` +
    `${m.startedAt.slice(0, 10)}; workload: ${config}; bars: median of ${report.plan.runs} ` +
    `run(s), whiskers: min–max`;
  const legend = [
    ...modes.map(
      (mode, i) =>
        `<rect x="${AXIS_LEFT + i * 110}" y="66" width="14" height="14" fill="${MODE_COLORS[mode]}"/>` +
        `<text x="${AXIS_LEFT + i * 110 + 20}" y="78" font-size="13">${mode}</text>`,
    ),
    lineSample(AXIS_LEFT + 340, 73, GOAL),
    lineSample(AXIS_LEFT + 480, 73, MEMCPY),
    lineSample(AXIS_LEFT + 650, 73, MEMCPY3),
    `<text x="${WIDTH - 8}" y="78" font-size="12" text-anchor="end">0 = not stopped</text>`,
  ].join('\n');
  const body = panels
    .map((p, i) =>
      panelSvg(
        p,
        (i % 2) * (panelW + GAP),
        TOP + Math.floor(i / 2) * (PANEL_H + GAP),
        panelW,
        PANEL_H,
      ),
    )
    .join('\n');
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<title>predump bench: pre-dump times per size and mode</title>`,
    `<desc>${escapeXml(`${subtitle}. Produced by: ${report.plan.command}`)}</desc>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${AXIS_LEFT}" y="26" font-size="18" font-weight="bold">predump bench: time stopped and total time per size and mode</text>`,
    `<text x="${AXIS_LEFT}" y="48" font-size="12" fill="#444" textLength="${Math.min(WIDTH - AXIS_LEFT - 8, subtitle.length * 6.6)}" lengthAdjust="spacingAndGlyphs">${escapeXml(subtitle)}</text>`,
    legend,
    body,
    `<text x="${AXIS_LEFT}" y="${height - 8}" font-size="11" fill="#666">${escapeXml(report.plan.command)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}
