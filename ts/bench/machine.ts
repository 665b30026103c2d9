/**
 * The machine a benchmark ran on, and the few things it reads from /proc while
 * running: free memory, and this process's peak resident memory, reset before
 * each pre-dump so that it measures that pre-dump alone.
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KernelCheck } from '../generated/native.js';
import { packageRoot } from '../native.js';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memTotalBytes: number;
  /** MemAvailable when the benchmark started. */
  memAvailableBytes: number;
  kernel: string;
  arch: string;
  node: string;
  predump: string;
  imagesDir: string;
  /** The file system type of imagesDir (tmpfs, ext4, …). */
  imagesFs: string;
  pipeMaxSize: number | null;
  capSysResource: boolean;
  root: boolean;
  /** The dirty tracking incremental pre-dumps use ('none': no incremental runs). */
  trackMem: string;
  uffdWp: boolean;
  /** Load averages (1, 5, 15 min) at the start and at the end: how busy the machine was. */
  loadAvgStart: number[];
  /** The share of CPU time in use in the second before the run (0–1): others' work. */
  cpuBusyStart: number | null;
  loadAvgEnd: number[];
  startedAt: string;
  durationS: number;
}

/** The CPU time counters of /proc/stat: all, and idle (idle + iowait). */
async function cpuTimes(): Promise<{ all: number; idle: number } | undefined> {
  const line = (await readFile('/proc/stat', 'utf8').catch(() => '')).split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  if (f.length < 5 || f.some((x) => !Number.isFinite(x))) return undefined;
  return { all: f.reduce((a, b) => a + b, 0), idle: f[3]! + f[4]! };
}

/**
 * The share of all CPUs' time that was busy over the next `ms` milliseconds
 * (0–1): how loaded the machine is now, where the load average lags by minutes.
 */
export async function cpuBusy(ms: number): Promise<number | undefined> {
  const a = await cpuTimes();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const b = await cpuTimes();
  if (!a || !b || b.all <= a.all) return undefined;
  return 1 - (b.idle - a.idle) / (b.all - a.all);
}

/** A field of /proc/meminfo in bytes, or undefined. */
export async function meminfo(field: string): Promise<number | undefined> {
  const text = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : undefined;
}

export async function memAvailable(): Promise<number> {
  return (await meminfo('MemAvailable')) ?? os.freemem();
}

/** The type of the file system holding `dir`: the longest mount point that contains it. */
export async function fsType(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  let best = { at: '', type: 'unknown' };
  for (const line of mounts.split('\n')) {
    const [, at, type] = line.split(' ');
    if (at === undefined || type === undefined) continue;
    const point = at.replace(/\\040/g, ' ');
    const inside = abs === point || abs.startsWith(point.endsWith('/') ? point : `${point}/`);
    if (inside && point.length >= best.at.length) best = { at: point, type };
  }
  return best.type;
}

/**
 * Resets this process's VmHWM to its current resident size (clear_refs 5,
 * Linux 4.0+). False where that is not allowed: then the peak is the
 * process's lifetime peak.
 */
export async function resetPeakRss(): Promise<boolean> {
  try {
    await writeFile('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

async function statusField(field: string): Promise<number | undefined> {
  const text = await readFile('/proc/self/status', 'utf8').catch(() => '');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** VmHWM of this process, in bytes. */
export async function peakRss(): Promise<number> {
  return (await statusField('VmHWM')) ?? process.resourceUsage().maxRSS * 1024;
}

/** VmRSS of this process, in bytes. */
export async function currentRss(): Promise<number> {
  return (await statusField('VmRSS')) ?? process.memoryUsage().rss;
}

export async function predumpVersion(): Promise<string> {
  const text = await readFile(path.join(packageRoot, 'package.json'), 'utf8').catch(() => '{}');
  const version = (JSON.parse(text) as { version?: unknown }).version;
  return typeof version === 'string' ? version : 'unknown';
}

export async function describeMachine(
  check: KernelCheck,
  dir: string,
  trackMem: string,
  busy: number | undefined,
): Promise<Omit<MachineInfo, 'loadAvgEnd' | 'durationS'>> {
  const cpus = os.cpus();
  const uffd = check.capabilities.find((c) => c.name === 'uffd-wp');
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memTotalBytes: os.totalmem(),
    memAvailableBytes: await memAvailable(),
    kernel: check.kernel,
    arch: check.arch,
    node: process.version,
    predump: await predumpVersion(),
    imagesDir: path.resolve(dir),
    imagesFs: await fsType(dir),
    pipeMaxSize: check.pipeMaxSize ?? null,
    capSysResource: check.capSysResource,
    root: check.root,
    trackMem,
    uffdWp: uffd?.supported === true,
    loadAvgStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
    cpuBusyStart: busy === undefined ? null : Math.round(busy * 1000) / 1000,
    startedAt: new Date().toISOString(),
  };
}

/** The load averages, to two decimals. */
export const loadAvg = (): number[] => os.loadavg().map((x) => Math.round(x * 100) / 100);

/** The machine as the smaller benchmarks (--page-server, --tree) report it. */
export interface RunMachine {
  cpus: number;
  kernel: string;
  node: string;
  imagesDir: string;
  loadAvgStart: number[];
  loadAvgEnd: number[];
  startedAt: string;
  durationS: number;
}

/** Times a benchmark run `body`, and says on what machine it ran. */
export async function timedRun<T>(
  imagesDir: string,
  body: () => Promise<T>,
): Promise<{ machine: RunMachine; result: T }> {
  const startedAt = new Date();
  const loadAvgStart = loadAvg();
  const result = await body();
  return {
    result,
    machine: {
      cpus: os.cpus().length,
      kernel: os.release(),
      node: process.version,
      imagesDir,
      loadAvgStart,
      loadAvgEnd: loadAvg(),
      startedAt: startedAt.toISOString(),
      durationS: Math.round((Date.now() - startedAt.getTime()) / 100) / 10,
    },
  };
}

/** What a whole command did: its exit status, output and wall time. */
export interface Ran {
  status: number;
  ms: number;
  stdout: string;
  stderr: string;
}

/** Runs `argv` to its end without blocking the event loop; its wall time from spawn to exit. */
export function runToEnd(argv: readonly string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({
        status: code ?? (signal ? 128 : 1),
        ms: performance.now() - started,
        stdout,
        stderr,
      }),
    );
  });
}
