/**
 * `predump bench --page-server`: pre-dumps of the bundled workload streamed to
 * `predump page-server` on loopback, beside a plain TCP send of the same bytes
 * and a local pre-dump in the same mode, the three taking turns round after
 * round, and writing as many bytes into a file where the images go. The
 * local pre-dump's own throughput is the bound on this machine: the session
 * makes the same copies and sends the bytes besides. Every command is a whole process, as a migration script runs them.
 *
 * The goals (issue 14): throughput ≥ 0.8× the plain TCP send; the target's
 * stopped time as in a local pre-dump; the receiver's memory flat whatever the size.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { PredumpError } from '../errors.js';
import { native, packageRoot } from '../native.js';
import type { Size } from './plan.js';
import { runToEnd, timedRun, type Ran, type RunMachine } from './machine.js';
import { formatStat, mapStat, rounded, stat, type Stat } from './stats.js';
import { columns, machineLine } from './table.js';

/** The format of the report (`version`): raised when a field changes meaning. */
export const PAGE_SERVER_REPORT_VERSION = 1;

/** Issue 14: a page-server pre-dump moves its bytes at least this fast, relative to TCP. */
export const THROUGHPUT_GOAL = 0.8;
/** The stopped time "unchanged": within this factor of the local pre-dump's median. */
const STOPPED_SLACK = 1.25;
/** The receiver's peak RSS "flat": the largest size's within this of the smallest's. */
const RSS_SLACK_BYTES = 32 << 20;

export type PageServerMode = 'read' | 'splice';

export interface PageServerPlan {
  sizes: Size[];
  modes: PageServerMode[];
  runs: number;
  /** Where both sides' images go (a temporary directory inside it). */
  dir: string;
}

export interface PageServerEvents {
  note(message: string): void;
  step(what: string): void;
}

export interface PageServerRow {
  sizeBytes: number;
  label: string;
  mode: PageServerMode;
  runs: number;
  /** Page bytes the client sent (its bytesSent, headers included). */
  bytesSent: Stat;
  /** The client's session, from its connect to the server's "stored". */
  sessionMs: Stat;
  /** bytesSent ÷ sessionMs, MB/s (10^6 bytes). */
  sendMBps: Stat;
  /** The plain TCP send of as many bytes, in the same rounds. */
  tcpMs: Stat;
  tcpMBps: Stat;
  /**
   * Writing as many bytes into a new file where the server's images go, in the
   * same rounds: the receiving side's floor (the server splices socket → file).
   */
  writeMBps: Stat;
  /** Median throughput ÷ median TCP throughput. */
  xTcp: number;
  /** The whole client command, spawn to exit. */
  wallMs: Stat;
  stoppedMs: Stat;
  /** A local pre-dump in the same mode, in the same rounds. */
  localStoppedMs: Stat;
  localWallMs: Stat;
  /**
   * The local pre-dump's bytesWritten ÷ its totalMs, MB/s: the same copies out
   * of the same process into the same file system, without the network. The
   * page server's session does all that and sends the bytes besides, so this
   * bounds what it can reach on this machine.
   */
  localMBps: Stat;
  /** The page server's peak resident size (its whole Node process). */
  serverPeakRssBytes: Stat;
}

export interface PageServerGoal {
  id: string;
  goal: string;
  met: boolean;
  detail: string;
}

export interface PageServerReport {
  version: typeof PAGE_SERVER_REPORT_VERSION;
  ok: true;
  command: string;
  machine: RunMachine;
  rows: PageServerRow[];
  goals: PageServerGoal[];
}

const bin = (): string => path.join(packageRoot, 'bin', 'predump.js');

interface ServerResult {
  pageBytes: number;
  peakRssBytes: number;
}

/**
 * `predump page-server` on 127.0.0.1, a port the kernel picks: resolves with the
 * port once it listens, and `done` with its result when the session ended.
 */
async function startServer(
  dir: string,
): Promise<{ port: number; done: Promise<ServerResult>; stop: () => void }> {
  const child = spawn(
    process.execPath,
    [bin(), 'page-server', '-D', dir, '--address', '127.0.0.1', '--port', '0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const lines = createInterface({ input: child.stdout });
  const it = lines[Symbol.asyncIterator]();
  const failed = (what: string): PredumpError =>
    new PredumpError('EBENCH', `predump page-server ${what}: ${stderr.trim().slice(-400)}`);
  const first = await it.next();
  // A server whose client failed would wait for a connection for ever: stopped
  // (its own child, by its pid), it removes what it received.
  const stop = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  if (first.done) throw failed('exited before it listened');
  const listening = (JSON.parse(first.value) as { listening?: { port: number } }).listening;
  if (!listening) {
    stop();
    throw failed(`said '${first.value}' instead of where it listens`);
  }
  const closed = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  const done = (async (): Promise<ServerResult> => {
    const last = await it.next();
    const code = await closed;
    if (last.done || code !== 0) throw failed(`failed (exit ${code})`);
    const r = JSON.parse(last.value) as Partial<ServerResult>;
    if (typeof r.pageBytes !== 'number' || typeof r.peakRssBytes !== 'number') {
      throw failed(`ended with '${last.value.slice(0, 200)}'`);
    }
    return { pageBytes: r.pageBytes, peakRssBytes: r.peakRssBytes };
  })();
  // Never an unhandled rejection while the client runs: awaited below.
  done.catch(() => undefined);
  return { port: listening.port, done, stop };
}

interface PreDumpJson {
  stoppedWindowMs: number;
  pagesWritten: number;
  bytesWritten: number;
  totalMs: number;
  pageServer: { bytesSent: number; sessionMs: number } | null;
}

function preDumpArgv(pid: number, dir: string, mode: PageServerMode, port?: number): string[] {
  const argv = [process.execPath, bin(), 'pre-dump', '-t', String(pid), '-D', dir];
  argv.push('--pre-dump-mode', mode, '--track-mem', 'none', '--json');
  if (port !== undefined)
    argv.push('--page-server', '--address', '127.0.0.1', '--port', String(port));
  return argv;
}

async function preDump(argv: string[]): Promise<{ ran: Ran; json: PreDumpJson }> {
  const ran = await runToEnd(argv);
  if (ran.status !== 0) {
    throw new PredumpError(
      'EBENCH',
      `${argv.slice(2, 4).join(' ')} failed (exit ${ran.status}): ${ran.stderr.trim().slice(-400)}`,
    );
  }
  return { ran, json: JSON.parse(ran.stdout) as PreDumpJson };
}

const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

/** One size and mode: `runs` rounds (one more first, not counted) of the three, in turns. */
async function measure(
  plan: PageServerPlan,
  size: Size,
  mode: PageServerMode,
  scratch: string,
  events: PageServerEvents,
): Promise<PageServerRow> {
  const { Workload } = await import('../workload.js');
  const workload = await Workload.start({ sizeBytes: size.bytes, threads: 1 });
  const s = {
    bytes: [] as number[],
    session: [] as number[],
    send: [] as number[],
    tcp: [] as number[],
    tcpRate: [] as number[],
    writeRate: [] as number[],
    wall: [] as number[],
    stopped: [] as number[],
    localStopped: [] as number[],
    localWall: [] as number[],
    localRate: [] as number[],
    rss: [] as number[],
  };
  // What the client sent last: the TCP reference sends as many bytes.
  let lastSent = size.bytes;
  const steps = ['server', 'local', 'tcp', 'write'] as const;
  try {
    for (let round = -1; round < plan.runs; round++) {
      events.step(`${size.label} ${mode}: round ${round + 1} of ${plan.runs}`);
      const count = round >= 0;
      for (let k = 0; k < steps.length; k++) {
        const step = steps[(k + Math.max(0, round)) % steps.length]!;
        if (step === 'tcp') {
          const ms = await native.tcpReference(lastSent);
          if (count) {
            s.tcp.push(ms);
            s.tcpRate.push(mbps(lastSent, ms));
          }
          continue;
        }
        if (step === 'write') {
          const ms = await native.writeReference(scratch, lastSent);
          if (count) s.writeRate.push(mbps(lastSent, ms));
          continue;
        }
        const local = await mkdtemp(path.join(scratch, `${step}-`));
        const remote = step === 'server' ? await mkdtemp(path.join(scratch, 'received-')) : null;
        try {
          if (step === 'local') {
            const { ran, json } = await preDump(preDumpArgv(workload.pid, local, mode));
            if (count) {
              s.localStopped.push(json.stoppedWindowMs);
              s.localWall.push(ran.ms);
              s.localRate.push(mbps(json.bytesWritten, json.totalMs));
            }
            continue;
          }
          const server = await startServer(remote!);
          let ran: Ran;
          let json: PreDumpJson;
          try {
            ({ ran, json } = await preDump(preDumpArgv(workload.pid, local, mode, server.port)));
          } catch (err) {
            server.stop();
            throw err;
          }
          const got = await server.done;
          const sent = json.pageServer;
          if (!sent) throw new PredumpError('EBENCH', 'the pre-dump reported no page server');
          if (got.pageBytes !== json.pagesWritten * 4096) {
            throw new PredumpError(
              'EBENCH',
              `the server stored ${got.pageBytes} bytes of pages, the client wrote ${json.pagesWritten} pages`,
            );
          }
          lastSent = sent.bytesSent;
          if (count) {
            s.bytes.push(sent.bytesSent);
            s.session.push(sent.sessionMs);
            s.send.push(mbps(sent.bytesSent, sent.sessionMs));
            s.wall.push(ran.ms);
            s.stopped.push(json.stoppedWindowMs);
            s.rss.push(got.peakRssBytes);
          }
        } finally {
          await rm(local, { recursive: true, force: true });
          if (remote) await rm(remote, { recursive: true, force: true });
        }
      }
    }
    const self = await workload.selfCheck();
    if (!self.ok) {
      throw new PredumpError('EBENCH', `the ${size.label} workload failed its own check`);
    }
  } finally {
    await workload.stop();
  }
  const send = stat(s.send);
  const tcpRate = stat(s.tcpRate);
  return {
    sizeBytes: size.bytes,
    label: size.label,
    mode,
    runs: plan.runs,
    bytesSent: stat(s.bytes),
    sessionMs: rounded(stat(s.session), 3),
    sendMBps: rounded(send, 1),
    tcpMs: rounded(stat(s.tcp), 3),
    tcpMBps: rounded(tcpRate, 1),
    writeMBps: rounded(stat(s.writeRate), 1),
    xTcp: Math.round((send.median / tcpRate.median) * 1000) / 1000,
    wallMs: rounded(stat(s.wall), 3),
    stoppedMs: rounded(stat(s.stopped), 3),
    localStoppedMs: rounded(stat(s.localStopped), 3),
    localWallMs: rounded(stat(s.localWall), 3),
    localMBps: rounded(stat(s.localRate), 1),
    serverPeakRssBytes: stat(s.rss),
  };
}

function judge(rows: PageServerRow[]): PageServerGoal[] {
  const goals: PageServerGoal[] = [];
  for (const r of rows) {
    goals.push({
      id: `throughput-${r.label}-${r.mode}`,
      goal: `${r.label} ${r.mode}: to the page server at ≥ ${THROUGHPUT_GOAL}× a plain TCP send`,
      met: r.xTcp >= THROUGHPUT_GOAL,
      detail:
        `${r.sendMBps.median.toFixed(0)} MB/s against TCP's ${r.tcpMBps.median.toFixed(0)} MB/s: ${r.xTcp.toFixed(2)}× ` +
        `(a local pre-dump of the same process, no network: ${r.localMBps.median.toFixed(0)} MB/s, ` +
        `${(r.localMBps.median / r.tcpMBps.median).toFixed(2)}×; ` +
        `writing the images' file system alone: ${r.writeMBps.median.toFixed(0)} MB/s)`,
    });
    const ratio = r.stoppedMs.median / Math.max(r.localStoppedMs.median, 1e-3);
    goals.push({
      id: `stopped-${r.label}-${r.mode}`,
      goal: `${r.label} ${r.mode}: stopped as long as a local pre-dump (within ${STOPPED_SLACK}×)`,
      met: ratio <= STOPPED_SLACK,
      detail: `${r.stoppedMs.median.toFixed(2)} ms against ${r.localStoppedMs.median.toFixed(2)} ms local (medians): ${ratio.toFixed(2)}×`,
    });
  }
  for (const mode of new Set(rows.map((r) => r.mode))) {
    const of = rows.filter((r) => r.mode === mode).sort((a, b) => a.sizeBytes - b.sizeBytes);
    if (of.length < 2) continue;
    const small = of[0]!;
    const big = of[of.length - 1]!;
    const grew = big.serverPeakRssBytes.median - small.serverPeakRssBytes.median;
    goals.push({
      id: `server-memory-${mode}`,
      goal: `${mode}: the page server's memory flat from ${small.label} to ${big.label} (within ${RSS_SLACK_BYTES >> 20} MiB)`,
      met: grew <= RSS_SLACK_BYTES,
      detail: `peak RSS ${(small.serverPeakRssBytes.median / 2 ** 20).toFixed(1)} MiB at ${small.label}, ${(big.serverPeakRssBytes.median / 2 ** 20).toFixed(1)} MiB at ${big.label}`,
    });
  }
  return goals;
}

export async function runPageServerBench(
  plan: PageServerPlan,
  events: PageServerEvents,
  command: string,
): Promise<PageServerReport> {
  const { machine, result: rows } = await timedRun(plan.dir, async () => {
    const scratch = await mkdtemp(path.join(plan.dir, 'predump-bench-page-server-'));
    const rows: PageServerRow[] = [];
    try {
      for (const size of plan.sizes) {
        for (const mode of plan.modes) rows.push(await measure(plan, size, mode, scratch, events));
      }
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
    return rows;
  });
  return {
    version: PAGE_SERVER_REPORT_VERSION,
    ok: true,
    command,
    machine,
    rows,
    goals: judge(rows),
  };
}

/** The report as a table, then the goals. */
export function renderPageServerTable(r: PageServerReport): string {
  const mib = (s: Stat): Stat => mapStat(s, (x) => x / 2 ** 20);
  const out = columns(
    [
      'size',
      'mode',
      'sent MB/s',
      'TCP MB/s',
      'file MB/s',
      'local MB/s',
      '×TCP',
      'stopped ms',
      'local stopped ms',
      'command ms',
      'server RSS MiB',
    ],
    r.rows.map((x) => [
      x.label,
      x.mode,
      formatStat(x.sendMBps, 0),
      formatStat(x.tcpMBps, 0),
      formatStat(x.writeMBps, 0),
      formatStat(x.localMBps, 0),
      x.xTcp.toFixed(2),
      formatStat(x.stoppedMs, 2),
      formatStat(x.localStoppedMs, 2),
      formatStat(x.wallMs, 0),
      formatStat(mib(x.serverPeakRssBytes), 1),
    ]),
  );
  out.push('', 'Goals:');
  for (const g of r.goals) out.push(`  ${g.met ? 'met   ' : 'missed'} ${g.goal}: ${g.detail}`);
  out.push('', machineLine(r.rows[0]?.runs ?? 0, r.machine));
  return out.join('\n') + '\n';
}
