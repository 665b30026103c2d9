/**
 * Shared helpers of the end-to-end tests: running the CLI as a subprocess, temporary
 * directories, the workload's life cycle, the state of a target in /proc, crit.
 *
 * Every process a test starts is stopped by pid in a teardown; nothing here ever
 * signals a process by name.
 */
import type { ExecutionContext } from 'ava';
import { execFile, spawn, type ChildProcess, type ChildProcessByStdio } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import {
  mkdtemp,
  open,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  type FileHandle,
} from 'node:fs/promises';
import { setPriority, tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import {
  PE_PRESENT,
  pagemapFileName,
  pagesFileName,
  readPreDumpDir,
  type PreDumpDir,
} from '../ts/images/index.js';
import { Workload, type TreeProcess, type WorkloadOptions } from '../ts/workload.js';

export const execFileP = promisify(execFile);

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = path.join(ROOT, 'bin', 'predump.js');
export const NODE = process.execPath;
export const PAGE = 4096;
export const MiB = 1024 * 1024;
export const CRIT = ['/usr/bin/crit', '/usr/local/bin/crit'].find((p) => existsSync(p));

type T = ExecutionContext<unknown>;

// ---- the CLI ---------------------------------------------------------------------------------

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunningCli {
  child: ChildProcess;
  done: Promise<CliResult>;
}

/** Starts `command args…` with its output collected. */
export function startProcess(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  cwd = ROOT,
): RunningCli {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const done = new Promise<CliResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

/** Starts `node bin/predump.js args…`. */
export function startCli(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): RunningCli {
  return startProcess(NODE, [BIN, ...args], env, cwd);
}

/** Runs `node bin/predump.js args…` to its end. */
export function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  cwd = ROOT,
): Promise<CliResult> {
  return startCli(args, env, cwd).done;
}

/** The one JSON object of a `--json` run's stdout. */
export function parseJson<J = Record<string, unknown>>(t: T, r: CliResult): J {
  try {
    return JSON.parse(r.stdout) as J;
  } catch (err) {
    t.fail(`stdout is not one JSON object: ${(err as Error).message}\n${r.stdout}\n${r.stderr}`);
    throw err;
  }
}

/** `predump pre-dump … --json`'s result (the fields the tests read), for every mode. */
export interface PreDumpJson {
  version: number;
  command: string;
  ok: true;
  pid: number;
  trackBackend: string;
  imagesDir: string;
  mode: 'read' | 'splice' | 'freeze-free';
  requestedMode: 'auto' | 'read' | 'splice' | 'freeze-free';
  fallback: string | null;
  pipes: number;
  pinnedBytes: number;
  injectedCalls: number;
  injectMs: number;
  partial: boolean;
  threads: number;
  scanMethod: string;
  pagemapEntries: number;
  pagesScanned: number;
  pagesPresent: number;
  pagesWritten: number;
  pagesGone: number;
  bytesWritten: number;
  freezingMs: number;
  frozenMs: number;
  stoppedWindowMs: number;
  scanMs: number;
  drainMs: number;
  totalMs: number;
  drainMBps: number;
}

export interface ErrorJson {
  ok: false;
  error: { code: string; message: string };
}

/** Asserts a failed `--json` run: exit status, error code, message on stderr and in JSON. */
export function assertCliError(
  t: T,
  r: CliResult,
  expected: { exit: number; code: string; message: RegExp },
): ErrorJson {
  const why = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  t.is(r.code, expected.exit, why);
  t.regex(r.stderr, expected.message, why);
  t.regex(r.stderr, /predump: error: /, why);
  const j = parseJson<ErrorJson>(t, r);
  t.is(j.ok, false);
  t.is(j.error.code, expected.code, why);
  t.regex(j.error.message, expected.message);
  return j;
}

// ---- temporary directories and mounts -------------------------------------------------------

/** A new temporary directory, removed when the test ends. */
export async function tempDir(t: T, prefix = 'predump-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Mounts a tmpfs on `dir` (options as for mount -o); unmounted when the test ends. */
export async function mountTmpfs(t: T, dir: string, options: string): Promise<void> {
  await execFileP('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
  t.teardown(async () => {
    await execFileP('umount', [dir]);
  });
}

export function mkfifo(file: string): Promise<unknown> {
  return execFileP('mkfifo', ['-m', '0600', file]);
}

/** Opens the gate FIFO for writing: returns once the CLI waits at it (first part drained). */
export async function reachGate(gate: string, cli: RunningCli): Promise<FileHandle> {
  const opening = open(gate, 'w');
  const first = await Promise.race([
    opening.then((fh) => ({ fh })),
    cli.done.then((r: CliResult) => ({ r })),
  ]);
  if ('fh' in first) return first.fh;
  // The CLI ended before the gate: release our pending open, then fail.
  const rd = await open(gate, constants.O_RDONLY | constants.O_NONBLOCK);
  await (await opening).close();
  await rd.close();
  throw new Error(`the CLI exited before the gate (${first.r.code}): ${first.r.stderr}`);
}

// ---- the workload ----------------------------------------------------------------------------

export interface Target {
  w: Workload;
  pid: number;
  /** Threads it has when idle: the command thread, compute threads, the churn thread. */
  threads: number;
  /** Kills it now (SIGKILL by pid) and waits until it is gone. */
  kill(): Promise<void>;
  /** Waits until only its long-lived threads are left (a bounded number of looks). */
  settle(): Promise<void>;
}

/**
 * Starts the bundled workload (a grandchild of this process); it is stopped when the test
 * ends unless the test killed it through `kill()`.
 */
export async function startWorkload(t: T, options: WorkloadOptions): Promise<Target> {
  const w = await Workload.start(options);
  let gone = false;
  t.teardown(async () => {
    if (gone) return;
    gone = true;
    await w.stop();
  });
  const threads = w.threads + 1 + (options.churn ? 1 : 0) + (options.writerBytes ? 1 : 0);
  const target: Target = {
    w,
    pid: w.pid,
    threads,
    async kill() {
      if (gone) return;
      gone = true;
      await w.kill();
    },
    async settle() {
      // The workload fills and checks its memory with short-lived helper threads, which
      // may still be exiting (unmapping their signal stacks) after it has answered.
      for (let i = 0; i < 1000; i++) {
        const n = (await readdir(`/proc/${w.pid}/task`)).length;
        if (n === threads) return;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      throw new Error(`workload ${w.pid} still does not have ${threads} threads`);
    },
  };
  // The ready line comes before the compute threads have started (each maps its signal
  // stack, and may make a malloc arena, as it starts): wait until every one has done a pass,
  // so that the target's memory map is settled before a test looks at it.
  if (!(await computing(w))) throw new Error(`workload ${w.pid}: compute threads do not run`);
  await target.settle();
  // Its compute threads spin on every core; the CLI processes under test (and the other test
  // files) start faster when they come first. Per thread: setpriority on a pid is per task.
  for (const tid of await readdir(`/proc/${w.pid}/task`)) {
    try {
      setPriority(Number(tid), 19);
    } catch {
      // a helper thread that just exited
    }
  }
  return target;
}

/** A tree of 4 workload processes (root, 2 children, a grandchild) sharing 2 objects. */
export async function startTree(
  t: T,
): Promise<{ w: Workload; procs: TreeProcess[]; pids: number[] }> {
  const { w } = await startWorkload(t, {
    sizeBytes: 4 * MiB,
    threads: 1,
    tree: 4,
    sharedBytes: 1 * MiB,
    devzeroBytes: 512 * 1024,
  });
  const procs = await w.tree();
  t.is(procs.length, 4);
  return { w, procs, pids: procs.map((p) => p.pid) };
}

/** SIGSTOP (or SIGCONT) every process of a tree this test started. */
export function signalAll(pids: number[], sig: NodeJS.Signals): void {
  for (const pid of pids) process.kill(pid, sig);
}

/**
 * Waits until every compute thread of `w` has made progress since the call (a bounded
 * number of looks at its counters); false if one did not.
 */
export async function computing(w: Workload): Promise<boolean> {
  const first = (await w.command<{ compute: number[] }>('progress')).compute;
  for (let i = 0; i < 1000; i++) {
    const now = (await w.command<{ compute: number[] }>('progress')).compute;
    if (now.every((n, k) => n > first[k]!)) return true;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return false;
}

/**
 * Another tracer holding every process of `pids` (PTRACE_SEIZE: none is stopped), as a
 * debugger would: while it does, the kernel refuses predump's own attach to any of them.
 */
export async function holdAll(
  t: T,
  pids: number[],
): Promise<ChildProcessByStdio<Writable, Readable, null>> {
  const holder = spawn(
    'python3',
    [
      '-c',
      'import ctypes,sys\n' +
        'libc=ctypes.CDLL(None,use_errno=True)\n' +
        'bad=[p for p in map(int,sys.argv[1:]) if libc.ptrace(0x4206,p,0,0)!=0]\n' +
        'print("seized" if not bad else "failed %s %d" % (bad, ctypes.get_errno()),flush=True)\n' +
        'sys.stdin.read()\n',
      ...pids.map(String),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  t.teardown(() => holder.kill('SIGKILL'));
  const first = await new Promise<string>((resolve) =>
    createInterface({ input: holder.stdout }).once('line', resolve),
  );
  t.is(first, 'seized');
  return holder;
}

export async function release(
  holder: ChildProcessByStdio<Writable, Readable, null>,
): Promise<void> {
  holder.stdin.end();
  await new Promise((resolve) => holder.once('close', resolve));
}

// ---- /proc -----------------------------------------------------------------------------------

export interface ProcState {
  state: string;
  tracerPid: number;
}

/** State and TracerPid of a thread (or of the main thread), or undefined if it is gone. */
export async function procState(pid: number, tid = pid): Promise<ProcState | undefined> {
  const text = await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const field = (name: string): string => {
    const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/task/${tid}/status`);
    return m[1]!.trim();
  };
  return { state: field('State').charAt(0), tracerPid: Number(field('TracerPid')) };
}

/** Threads of `pid` that are stopped or traced (a process that is gone or dying has none). */
export async function heldThreads(pid: number): Promise<string[]> {
  const held: string[] = [];
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const s = await procState(pid, Number(tid));
    if (s === undefined) continue;
    if (s.state === 't' || s.state === 'T') held.push(`${pid}/${tid} in state ${s.state}`);
    if (s.tracerPid !== 0) held.push(`${pid}/${tid} traced by ${s.tracerPid}`);
  }
  return held;
}

/** The state letter of /proc/PID/stat (after the last ')'), or undefined if it is gone. */
export async function statState(pid: number): Promise<string | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  return text.slice(text.lastIndexOf(')') + 2).charAt(0);
}

/**
 * Kills `pid` (a process this test started, not its child: no waitpid) and returns once it
 * has exited: a zombie or gone, its memory released. A SIGKILL is only queued when kill()
 * returns; a run reading the process right after could still find its pages.
 */
export async function killAndWaitExit(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL');
  for (;;) {
    const state = await statState(pid);
    if (state === undefined || state === 'Z' || state === 'X') return;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Asserts that every thread of `pid` exists, is not stopped nor a zombie, and is untraced. */
export async function assertRunningUntraced(t: T, pid: number): Promise<void> {
  const tids = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  t.true(tids.length > 0, `process ${pid} is gone`);
  for (const tid of tids) {
    const s = await procState(pid, Number(tid));
    if (s === undefined) continue; // a thread that exited meanwhile
    t.false(
      ['t', 'T', 'Z', 'X'].includes(s.state),
      `thread ${tid} of ${pid} is in state ${s.state}`,
    );
    t.is(s.tracerPid, 0, `thread ${tid} of ${pid} is traced by ${s.tracerPid}`);
  }
}

export interface ProcSnapshot {
  maps: string;
  fds: Record<string, string>;
}

/** The memory map and the open files (fd → readlink) of a process. */
export async function snapshot(pid: number): Promise<ProcSnapshot> {
  // " (deleted)": someone rebuilt the binary meanwhile; the mapping is the same.
  const maps = (await readFile(`/proc/${pid}/maps`, 'utf8')).replace(/ \(deleted\)$/gm, '');
  const fds: Record<string, string> = {};
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    fds[fd] = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '?');
  }
  return { maps, fds };
}

interface MapLine {
  line: string;
  start: bigint;
  end: bigint;
  perms: string;
  anon: boolean;
}

function mapLines(maps: string): MapLine[] {
  return maps
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const w = line.split(/\s+/);
      const [s, e] = w[0]!.split('-');
      return {
        line,
        start: BigInt(`0x${s}`),
        end: BigInt(`0x${e}`),
        perms: w[1]!,
        anon: w[4] === '0' && (w[5] ?? '') === '',
      };
    });
}

const HEAP = 64n << 20n;
const THREAD_STACK = 2n << 20n;
const PAGE_BYTES = 4096n;

/**
 * Whether `m` (a line of `all`) is memory a multithreaded workload makes for itself whenever
 * more of its threads run at once than before: a glibc malloc heap (an anonymous 64 MiB-aligned
 * block, read-write at its start and reserved, `---p`, up to its end) or a thread stack of 2 MiB
 * (Rust's default) above a one-page guard. predump's scratch mapping is neither: it is made
 * read-write in a free gap with a free page on either side, never inside such a block, and is
 * never 2 MiB above a guard page.
 */
function targetsOwn(m: MapLine, all: MapLine[]): boolean {
  if (!m.anon) return false;
  const block = (m.start / HEAP) * HEAP;
  const heap = all.some(
    (r) => r.anon && r.perms === '---p' && r.end === block + HEAP && r.start >= block,
  );
  if (heap && m.end <= block + HEAP) return true;
  const above = all.find((r) => r.start === m.end);
  const below = all.find((r) => r.end === m.start);
  const stack = (guard: MapLine | undefined, rw: MapLine | undefined) =>
    guard !== undefined &&
    rw !== undefined &&
    guard.anon &&
    rw.anon &&
    guard.perms === '---p' &&
    guard.end - guard.start === PAGE_BYTES &&
    rw.perms === 'rw-p' &&
    rw.end - rw.start === THREAD_STACK;
  return stack(m, above) || stack(below, m);
}

/**
 * How `after` differs from `before` in fds and mappings, leaving out the mappings the target
 * made for itself (`targetsOwn`): [what differs, the target's own mappings left out].
 */
export function leftoverDiff(before: ProcSnapshot, after: ProcSnapshot): [string[], string[]] {
  const [was, now] = [mapLines(before.maps), mapLines(after.maps)];
  const wasSet = new Set(was.map((m) => m.line));
  const nowSet = new Set(now.map((m) => m.line));
  const diff: string[] = [];
  const own: string[] = [];
  for (const m of was.filter((m) => !nowSet.has(m.line))) {
    (targetsOwn(m, was) ? own : diff).push(`-${m.line}`);
  }
  for (const m of now.filter((m) => !wasSet.has(m.line))) {
    (targetsOwn(m, now) ? own : diff).push(`+${m.line}`);
  }
  for (const fd of new Set([...Object.keys(before.fds), ...Object.keys(after.fds)])) {
    if (before.fds[fd] !== after.fds[fd]) {
      diff.push(`fd ${fd}: ${before.fds[fd] ?? '-'} -> ${after.fds[fd] ?? '-'}`);
    }
  }
  return [diff, own];
}

/** A pid that names no process now: one of a child of ours that has exited and been reaped. */
export async function freePid(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const p = startProcess('true', []);
    const pid = p.child.pid!;
    await p.done;
    if (!existsSync(`/proc/${pid}`)) return pid;
  }
  throw new Error('no free pid found');
}

// ---- images ----------------------------------------------------------------------------------

export type Json = Record<string, unknown>;

/** `crit decode -i FILE` as JSON. */
export async function crit(file: string): Promise<{ magic: string; entries: Json[] }> {
  const { stdout } = await execFileP(CRIT!, ['decode', '-i', file], { maxBuffer: 64 * MiB });
  return JSON.parse(stdout) as { magic: string; entries: Json[] };
}

export interface CheckedDir {
  dir: PreDumpDir;
  presentPages: number;
}

/**
 * Checks a complete pre-dump directory of `pid`: the set of files, modes 0600, entries sorted
 * and non-overlapping, the pages file size, and crit's decoding of every image.
 */
export async function checkImagesDir(
  t: T,
  dir: string,
  pid: number,
  options: { crit?: boolean } = {},
): Promise<CheckedDir> {
  // predump-track.json: made with dirty tracking (the default where the kernel has it).
  const names = (await readdir(dir)).filter((n) => n !== 'predump-track.json').sort();
  t.deepEqual(
    names.filter((n) => !n.startsWith('notes')),
    ['inventory.img', pagemapFileName(pid), pagesFileName(1), 'stats-dump'].sort(),
    `files of ${dir}`,
  );
  for (const name of names.filter((n) => !n.startsWith('notes'))) {
    const st = await stat(path.join(dir, name));
    t.is(st.mode & 0o777, 0o600, `mode of ${name}`);
    t.true(st.isFile(), `${name} is a regular file`);
  }

  const d = await readPreDumpDir(dir);
  t.true(d.complete);
  t.is(d.pid, pid);
  t.is(d.pagesId, 1);
  t.is(d.parent, undefined);
  t.true(d.entries.length > 0);
  let prevEnd = 0;
  for (const e of d.entries) {
    t.true(e.vaddr % PAGE === 0 && e.nrPages > 0, `entry 0x${e.vaddr.toString(16)}`);
    t.true(e.vaddr >= prevEnd, `entry 0x${e.vaddr.toString(16)} is sorted and not overlapping`);
    t.is(e.flags, PE_PRESENT);
    prevEnd = e.vaddr + e.nrPages * PAGE;
  }
  const presentPages = d.entries.reduce((n, e) => n + e.nrPages, 0);
  const pagesBytes = (await stat(path.join(dir, pagesFileName(1)))).size;
  t.is(pagesBytes, presentPages * PAGE, 'pages file size = present pages × 4096');
  t.is(d.pagesFileBytes, pagesBytes);
  t.is(d.stats?.pagesWritten, presentPages);

  // crit is required (CI installs it): its absence fails here rather than skipping.
  if (options.crit !== false) {
    t.truthy(CRIT, 'crit (Debian package criu) is installed');
    const inv = await crit(path.join(dir, 'inventory.img'));
    t.is(inv.magic, 'INVENTORY');
    t.is(inv.entries.length, 1);
    t.is(inv.entries[0]!['pre_dump_mode'], 2);
    t.is(inv.entries[0]!['img_version'], 0);
    t.true(Number(inv.entries[0]!['dump_uptime']) > 0);

    const pm = await crit(path.join(dir, pagemapFileName(pid)));
    t.is(pm.magic, 'PAGEMAP');
    t.deepEqual(pm.entries[0], { pages_id: 1 });
    // crit 3.17 knows field 2 only, as nr_pages (CRIU 4.2 calls it compat_nr_pages).
    t.deepEqual(
      pm.entries.slice(1).map((e) => ({
        vaddr: Number(e['vaddr']),
        nrPages: Number(e['nr_pages'] ?? e['compat_nr_pages']),
        flags: e['flags'],
      })),
      d.entries.map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages, flags: PE_PRESENT })),
    );

    const st = await crit(path.join(dir, 'stats-dump'));
    t.is(st.magic, 'STATS');
    const dump = st.entries[0]!['dump'] as Json;
    t.is(dump['pages_written'], presentPages);
    t.is(dump['pages_skipped_parent'], 0);
    t.true(Number(dump['pages_scanned']) >= presentPages);
  }
  return { dir: d, presentPages };
}

/** sha256 and mtime of every file of a directory. */
export async function fingerprint(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) {
    const file = path.join(dir, name);
    const st = await stat(file);
    const hash = createHash('sha256')
      .update(await readFile(file))
      .digest('hex');
    out[name] = `${hash} ${st.mtimeMs} ${st.mode.toString(8)} ${st.size}`;
  }
  return out;
}

/**
 * Page address -> the bytes the chain of image directories ending at `dir`
 * holds for it: every page of `dir`'s pagemap (PE_PRESENT from its own pages
 * image, PE_PARENT looked up the chain). Independent of predump's own verify:
 * it reads the images with the codec alone.
 */
export async function rebuildChain(dir: string): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>();
  const wanted = new Set<number>();
  const first = await readPreDumpDir(dir);
  for (const e of first.entries) for (let i = 0; i < e.nrPages; i++) wanted.add(e.vaddr + i * PAGE);
  let at: string | undefined = dir;
  while (at !== undefined && out.size < wanted.size) {
    const d = await readPreDumpDir(at);
    // A page server's directory names its pages file after its own id (CRIU's 65537).
    const pages = await readFile(path.join(at, pagesFileName(d.pagesId ?? 1)));
    let offset = 0;
    for (const e of d.entries) {
      if (!(e.flags & PE_PRESENT)) continue;
      for (let i = 0; i < e.nrPages; i++, offset += PAGE) {
        const p = e.vaddr + i * PAGE;
        if (wanted.has(p) && !out.has(p)) out.set(p, pages.subarray(offset, offset + PAGE));
      }
    }
    at = d.parent === undefined ? undefined : path.resolve(at, d.parent);
  }
  if (out.size !== wanted.size) {
    throw new Error(`the chain of ${dir} lacks ${wanted.size - out.size} of its pages`);
  }
  return out;
}

/**
 * Compares every page the chain ending at `dir` holds with /proc/PID/mem (the
 * process must be stopped for the answer to mean anything).
 */
export async function compareChainWithMemory(
  dir: string,
  pid: number,
): Promise<{ pages: number; mismatches: number[] }> {
  const chain = await rebuildChain(dir);
  const mem = await open(`/proc/${pid}/mem`, 'r');
  const mismatches: number[] = [];
  try {
    const buf = Buffer.alloc(PAGE);
    for (const [addr, page] of chain) {
      await mem.read(buf, 0, PAGE, addr);
      if (!buf.equals(page)) mismatches.push(addr);
    }
  } finally {
    await mem.close();
  }
  return { pages: chain.size, mismatches };
}

/**
 * A kill test's tally as its log should say it: a passing run's (nothing harmed) says so
 * without a figure that reads like an alarm ("0/40 … harmed"); a failing run's is plain.
 */
export function harmTally(harmed: number, trials: number, what: string): string {
  return harmed === 0
    ? `none of the ${trials} ${what} harmed the target`
    : `${harmed} of the ${trials} ${what} harmed the target`;
}

/** The first line of a running CLI's stdout (a page server's port or listening JSON line). */
export function firstLine(cli: RunningCli): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (s: string): void => {
      buf += s;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        cli.child.stdout!.off('data', onData);
        resolve(buf.slice(0, nl));
      }
    };
    cli.child.stdout!.on('data', onData);
    cli.done.then((r) => reject(new Error(`exited before listening: ${r.stderr}`)), reject);
  });
}
