/**
 * The bundled workload: a process whose memory predump can check page by page.
 * Used by `predump demo`, the benchmarks and the tests. It exits when its stdin
 * closes, so it never outlives the process that started it.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface, type Interface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { PredumpError } from './errors.js';
import { native, nativeFiles, packageRoot } from './native.js';

export interface WorkloadOptions {
  /** Bytes of pattern memory (default 64 MiB). */
  sizeBytes?: number;
  /** Compute threads besides the command thread (default 1). */
  threads?: number;
  /** Keep mapping, mprotecting and unmapping an area of its own. */
  churn?: boolean;
  /** A seccomp filter makes vmsplice fail with EPERM (as container profiles do). */
  denyVmsplice?: boolean;
  /** Ignore SIGTRAP: syscall injection (splice mode) must refuse to touch it. */
  ignoreSigtrap?: boolean;
  /** Bytes of a region a thread keeps writing random words into, as fast as it can. */
  writerBytes?: number;
  /**
   * A tree of this many processes (the root forks the others; process i is a child of
   * process (i - 1) / 2), each with its own data region of `sizeBytes`.
   */
  tree?: number;
  /** Bytes of a MAP_SHARED|MAP_ANONYMOUS region shared by the whole tree (pattern by offset). */
  sharedBytes?: number;
  /** The same, made by a shared mapping of /dev/zero. */
  devzeroBytes?: number;
}

/** A process of a `tree` workload. */
export interface TreeProcess {
  index: number;
  pid: number;
  parent: number | null;
  alive: boolean;
  data: Area;
}

/** A region shared by a tree workload's processes (its pattern is by offset). */
export interface SharedArea extends Area {
  /** The inode of the shared object: CRIU's shmid. */
  inode: number;
}

export interface Area {
  start: number;
  bytes: number;
}

/** A run of pages rewritten at `epoch`. */
export interface EpochRun {
  start: number;
  pages: number;
  epoch: number;
}

export interface SelfCheck {
  ok: boolean;
  pagesChecked: number;
  mismatches: number;
  computeErrors: number;
}

export interface PatternCheckResult {
  pagesChecked: number;
  pagesSkipped: number;
  mismatches: number;
  firstMismatches: number[];
  trailingBytes: number;
}

export function workloadBinary(): string {
  const { workload: bin, from } = nativeFiles();
  if (!existsSync(bin)) {
    throw new PredumpError(
      'ENOWORKLOAD',
      from === 'checkout'
        ? `the workload program ${bin} is missing: run \`npm install\` (or \`npm run build\`) in ${packageRoot}`
        : `the workload program ${bin} is missing from predump's platform package: reinstall predump`,
    );
  }
  return bin;
}

export class Workload {
  readonly pid: number;
  readonly data: Area;
  readonly churnArea: Area | null;
  /** The writer thread's region (see `WorkloadOptions.writerBytes`). */
  readonly writerArea: Area | null;
  readonly threads: number;
  /** The shared regions of a tree workload (null: none). */
  readonly shared: SharedArea | null;
  readonly devzero: SharedArea | null;
  private readonly lines: AsyncIterator<string>;
  /** Settles when the workload's stdout closes: it has exited. */
  private readonly closed: Promise<void>;

  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, null>,
    rl: Interface,
    ready: ReadyLine,
  ) {
    this.lines = rl[Symbol.asyncIterator]();
    this.pid = ready.pid;
    this.data = { start: Number(ready.data.start), bytes: ready.data.bytes };
    this.churnArea = ready.churn
      ? { start: Number(ready.churn.start), bytes: ready.churn.bytes }
      : null;
    this.writerArea = ready.writer
      ? { start: Number(ready.writer.start), bytes: ready.writer.bytes }
      : null;
    this.threads = ready.threads;
    const sharedArea = (a: ReadyLine['shared']): SharedArea | null =>
      a ? { start: Number(a.start), bytes: a.bytes, inode: a.inode } : null;
    this.shared = sharedArea(ready.shared);
    this.devzero = sharedArea(ready.devzero);
    this.closed = new Promise((resolve) => {
      if (child.stdout.readableEnded) resolve();
      else child.stdout.once('close', () => resolve());
    });
  }

  /** Starts the workload and waits for its ready line (no sleeping: it says when). */
  static async start(options: WorkloadOptions = {}): Promise<Workload> {
    const args = [
      '--size',
      String(options.sizeBytes ?? 64 * 1024 * 1024),
      '--threads',
      String(options.threads ?? 1),
    ];
    if (options.churn) args.push('--churn');
    if (options.denyVmsplice) args.push('--deny-vmsplice');
    if (options.ignoreSigtrap) args.push('--ignore-sigtrap');
    if (options.writerBytes) args.push('--writer', String(options.writerBytes));
    if (options.tree) args.push('--tree', String(options.tree));
    if (options.sharedBytes) args.push('--shared', String(options.sharedBytes));
    if (options.devzeroBytes) args.push('--devzero', String(options.devzeroBytes));
    // Not our child: Node's waitpid on a child would take the ptrace stops of
    // the freeze (and report them as an exit).
    args.push('--grandchild');
    const child = spawn(workloadBinary(), args, { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = createInterface({ input: child.stdout });
    const first = await new Promise<string>((resolve, reject) => {
      rl.once('line', resolve);
      child.once('error', reject);
      child.stdout.once('close', () =>
        reject(new Error('the workload exited before it was ready')),
      );
    });
    const ready = JSON.parse(first) as ReadyLine;
    return new Workload(child, rl, ready);
  }

  /** Sends one command and returns its one-line JSON answer. */
  async command<T>(line: string): Promise<T> {
    this.child.stdin.write(`${line}\n`);
    const next = await this.lines.next();
    if (next.done) throw new Error(`workload ${this.pid} exited while answering '${line}'`);
    const answer = JSON.parse(next.value) as T & { error?: string };
    if (answer.error !== undefined) throw new Error(`workload: ${answer.error}`);
    return answer;
  }

  /** The processes of a tree workload (`tree` command at the root). */
  async tree(): Promise<TreeProcess[]> {
    const a = await this.command<{
      processes: {
        index: number;
        pid: number;
        parent: number | null;
        alive: boolean;
        data: { start: string; bytes: number };
      }[];
    }>('tree');
    return a.processes.map((p) => ({
      ...p,
      data: { start: Number(p.data.start), bytes: p.data.bytes },
    }));
  }

  /** The workload verifies its own memory and its threads' results. */
  selfCheck(): Promise<SelfCheck> {
    return this.command<SelfCheck>('check');
  }

  /** Rewrites permille/1000 of the data pages (chosen from seed) with a new epoch. */
  dirty(
    permille: number,
    seed = 1,
  ): Promise<{ dirtied: number; epoch: number; pages: [string, number][] }> {
    return this.command(`dirty ${permille} ${seed}`);
  }

  /** Pages whose contents changed since start. */
  async epochs(): Promise<EpochRun[]> {
    const a = await this.command<{ pages: [string, number, number][] }>('epochs');
    return a.pages.map(([start, pages, epoch]) => ({ start: Number(start), pages, epoch }));
  }

  /**
   * Checks every page of a pages image that falls in the workload's pattern
   * memory against the contents it must hold.
   */
  async checkImage(
    pagesPath: string,
    entries: { vaddr: number; nrPages: number }[],
  ): Promise<PatternCheckResult> {
    const regions = new Float64Array(entries.flatMap((e) => [e.vaddr, e.nrPages]));
    const areas = [this.data, ...(this.churnArea ? [this.churnArea] : [])];
    const runs = await this.epochs();
    return native.checkPattern(
      pagesPath,
      regions,
      new Float64Array(areas.flatMap((a) => [a.start, a.bytes])),
      new Float64Array(runs.flatMap((r) => [r.start, r.pages, r.epoch])),
    );
  }

  // Address-space changes outside the data region (their pages carry no
  // pattern: compare images with the live memory instead).

  /** A new read-write anonymous mapping of `pages` pages, filled from `seed`. */
  async map(pages: number, seed: number): Promise<Area> {
    const a = await this.command<{ addr: string }>(`map ${pages} ${seed}`);
    return { start: Number(a.addr), bytes: pages * 4096 };
  }

  /** New contents for `pages` pages at `addr` (of a mapping made with `map`). */
  async write(addr: number, pages: number, seed: number): Promise<void> {
    await this.command(`write 0x${addr.toString(16)} ${pages} ${seed}`);
  }

  async unmap(addr: number, pages: number): Promise<void> {
    await this.command(`unmap 0x${addr.toString(16)} ${pages}`);
  }

  async protect(addr: number, pages: number, prot: 'none' | 'r' | 'rw'): Promise<void> {
    await this.command(`protect 0x${addr.toString(16)} ${pages} ${prot}`);
  }

  /** MADV_DONTNEED: the pages read as zeros afterwards. */
  async dontneed(addr: number, pages: number): Promise<void> {
    await this.command(`dontneed 0x${addr.toString(16)} ${pages}`);
  }

  /** A new thread that maps and fills `pages` pages of its own, then waits. */
  async thread(pages: number, seed: number): Promise<{ tid: number; area: Area }> {
    const a = await this.command<{ tid: number; addr: string }>(`thread ${pages} ${seed}`);
    return { tid: a.tid, area: { start: Number(a.addr), bytes: pages * 4096 } };
  }

  /**
   * Forks a child that rewrites its copy of `pages` pages at `addr`, then waits
   * until the workload exits. Returns the child's pid.
   */
  async fork(addr: number, pages: number, seed: number): Promise<number> {
    const a = await this.command<{ child: number }>(`fork 0x${addr.toString(16)} ${pages} ${seed}`);
    return a.child;
  }

  /** Compute iterations per thread, churn operations, writer words written. */
  progress(): Promise<{ compute: number[]; churnOps: number; writerWrites: number }> {
    return this.command('progress');
  }

  /** Asks it to exit, and kills it (by pid) if it does not within 5 s. */
  async stop(): Promise<void> {
    this.child.stdin.end('exit\n');
    const timer = setTimeout(() => this.signal('SIGKILL'), 5000);
    await this.closed;
    clearTimeout(timer);
  }

  /** Kills it at once (SIGKILL, by pid), for tests of a target that dies. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.closed;
  }

  private signal(sig: NodeJS.Signals): void {
    try {
      process.kill(this.pid, sig);
    } catch {
      // already gone
    }
  }
}

interface ReadyLine {
  ready: true;
  pid: number;
  data: { start: string; bytes: number };
  churn: { start: string; bytes: number } | null;
  writer: { start: string; bytes: number } | null;
  shared?: { start: string; bytes: number; inode: number } | null;
  devzero?: { start: string; bytes: number; inode: number } | null;
  threads: number;
}
