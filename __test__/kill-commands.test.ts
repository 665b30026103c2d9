/**
 * The target survives any death of predump, in the commands other than a splice pre-dump
 * (whose kills are in splice.test.ts): the first tracked pre-dump (which makes the
 * userfaultfd and the marker inside the target), `untrack` (which closes them there) and
 * `dump`. Each trial SIGKILLs the CLI a random moment after it seized the target; the target
 * must run on unharmed, and the next command must leave it exactly as before the first run.
 * Also: predump stopped (SIGSTOP) in the middle of a run and continued finishes its run, and
 * predump killed while a thread of its target is itself being killed (the target then ends
 * exactly as that kill alone ends it) or exec'ing (the new program runs, untraced, with no fd
 * of ours).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { native } from '../ts/native.js';
import {
  heldThreads,
  leftoverDiff,
  MiB,
  parseJson,
  procState,
  runCli,
  snapshot,
  startCli,
  startWorkload,
  tempDir,
  type ProcSnapshot,
  type Target,
  harmTally,
} from './helpers.js';

type T = ExecutionContext;

/** Kills per command (200: 40); PREDUMP_KILL_TRIALS scales them as the other kill tests. */
const KILLS = Number(process.env['PREDUMP_KILL_TRIALS'] ?? 200);
const TRIALS = Math.max(4, Math.round(KILLS / 5));
/** Trials of each race (a target thread killed, or exec'ing) (200: 20). */
const RACES = Math.max(4, Math.round(KILLS / 10));

/** uffd-wp tracking is made and ended by injected calls; without it nothing is injected. */
const UFFD_WP = (await native.checkKernel()).capabilities.some(
  (c) => c.name === 'uffd-wp' && c.supported,
);

/** Why the target is harmed ('' if it is not): gone, held, or wrong in its own memory check. */
async function harm(target: Target): Promise<string> {
  const s = await procState(target.pid);
  if (s === undefined || s.state === 'Z' || s.state === 'X') return 'died';
  const h = await heldThreads(target.pid);
  if (h.length > 0) return `held: ${h.join(', ')}`;
  const c = await target.w.selfCheck();
  return c.ok ? '' : `selfCheck ${JSON.stringify(c)}`;
}

/** Starts `args`, waits until it has seized the target, SIGKILLs it `delay` ms later. */
async function killDuring(pid: number, args: string[], delay: number): Promise<number | null> {
  const cli = startCli(args);
  let ended = false;
  void cli.done.then(() => (ended = true));
  // Busy polling of /proc, no timer: the attach comes within a few hundred ms of the spawn.
  while (!ended && ((await procState(pid))?.tracerPid ?? 0) === 0);
  // The deliberate random moment of the kill: the point of this test.
  await new Promise((resolve) => setTimeout(resolve, delay));
  cli.child.kill('SIGKILL');
  return (await cli.done).code;
}

async function pristine(t: T, target: Target): Promise<ProcSnapshot> {
  t.like(await target.w.selfCheck(), { ok: true, mismatches: 0 });
  await target.settle();
  return snapshot(target.pid);
}

interface Experiment {
  /** Run before each trial (not killed): brings the target to the state the command needs. */
  prepare?: (t: T, pid: number, dir: string) => Promise<void>;
  /** The command killed in each trial. */
  command: (pid: number, dir: string) => string[];
}

async function experiment(t: T, name: string, e: Experiment): Promise<void> {
  const target = await startWorkload(t, { sizeBytes: 128 * MiB, threads: 2 });
  const before = await pristine(t, target);
  const tmp = await tempDir(t);
  const notes: string[] = [];
  let harmed = 0;
  let finished = 0;
  const ownMappings = new Set<string>();
  for (let trial = 0; trial < TRIALS; trial++) {
    const dir = path.join(tmp, `trial-${trial}`);
    await mkdir(dir);
    await e.prepare?.(t, target.pid, dir);
    const delay = Math.random() * 40;
    const code = await killDuring(target.pid, e.command(target.pid, dir), delay);
    if (code === 0) finished++;
    const why = await harm(target);
    if (why !== '') {
      harmed++;
      notes.push(`trial ${trial}: HARMED (${why}), killed ${delay.toFixed(1)} ms after the attach`);
      break; // a harmed target cannot serve the next trials
    }
    // The next command ends the tracking and removes whatever the dead run left.
    const u = await runCli(['untrack', '-t', String(target.pid), '--json']);
    t.is(u.code, 0, `trial ${trial}: untrack after the kill: ${u.stderr}`);
    await target.settle();
    // The target's own new thread stacks and malloc heaps (its selfCheck's threads) are
    // left out of the comparison: predump's leftovers can be neither.
    const [diff, own] = leftoverDiff(before, await snapshot(target.pid));
    if (diff.length > 0) {
      notes.push(
        `trial ${trial}: not as before after untrack (killed ${delay.toFixed(1)} ms after the attach): ` +
          diff.join(' '),
      );
    }
    for (const m of own) ownMappings.add(m);
    await rm(dir, { recursive: true, force: true });
  }
  t.log(`${name}: ${harmTally(harmed, TRIALS, 'kills')}; ${finished} runs ended before the kill`);
  if (ownMappings.size > 0) {
    t.log(
      `the target's own new thread stacks and heaps, not compared: ${[...ownMappings].join(', ')}`,
    );
  }
  t.is(harmed, 0, notes.join('\n'));
  t.deepEqual(notes, [], 'the target as before the first run after each untrack');
  t.true(finished < TRIALS, 'some kills came in the middle of a run');
}

/** A read-mode pre-dump of `pid` into `dir`, tracked with `track`. */
const preDump = (pid: number, dir: string, track: string, parent?: string) => [
  'pre-dump',
  '-t',
  String(pid),
  '-D',
  dir,
  '--pre-dump-mode',
  'read',
  '--track-mem',
  track,
  ...(parent ? ['--prev-images-dir', parent] : []),
  '--json',
];

/** A whole tracked pre-dump into `dir`/base: the target tracked, a parent to build on. */
async function armed(t: T, pid: number, dir: string): Promise<void> {
  const r = await runCli(preDump(pid, path.join(dir, 'base'), 'uffd-wp'));
  t.is(r.code, 0, r.stderr);
  t.like(parseJson(t, r), { ok: true });
}

const NO_UFFD_WP = 'no uffd-wp tracking on this kernel: nothing is injected';

test.serial(
  'SIGKILL of the CLI during a first uffd-wp tracked pre-dump never harms the target',
  async (t) => {
    if (!UFFD_WP) return t.pass(NO_UFFD_WP);
    // The userfaultfd and the marker are journaled before the calls that make them: a kill
    // anywhere leaves them named, and a tracking whose run died is removed whole.
    await experiment(t, 'first tracked pre-dump', {
      command: (pid, dir) => preDump(pid, dir, 'uffd-wp'),
    });
  },
);

test.serial('SIGKILL of the CLI during untrack never harms the target', async (t) => {
  if (!UFFD_WP) return t.pass(NO_UFFD_WP);
  await experiment(t, 'untrack', {
    prepare: armed,
    command: (pid) => ['untrack', '-t', String(pid), '--json'],
  });
});

test.serial(
  'SIGKILL of the CLI during a dump on a tracked chain never harms the target',
  async (t) => {
    if (!UFFD_WP) return t.pass(NO_UFFD_WP);
    await experiment(t, 'dump', {
      prepare: armed,
      command: (pid, dir) => [
        'dump',
        '-t',
        String(pid),
        '-D',
        path.join(dir, 'final'),
        '--prev-images-dir',
        '../base',
        '--json',
      ],
    });
  },
);

test.serial(
  'predump stopped (SIGSTOP) mid-run and continued finishes, the target intact',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 128 * MiB, threads: 2 });
    const before = await pristine(t, target);
    const dir = path.join(await tempDir(t), 'images');
    const cli = startCli(preDump(target.pid, dir, 'none'));
    let ended = false;
    void cli.done.then(() => (ended = true));
    while (!ended && ((await procState(target.pid))?.tracerPid ?? 0) === 0);
    cli.child.kill('SIGSTOP');
    // While predump is stopped its target waits, frozen (as CRIU's would): a stop is no death.
    await new Promise((resolve) => setTimeout(resolve, 300));
    cli.child.kill('SIGCONT');
    const r = await cli.done;
    t.is(r.code, 0, r.stderr);
    t.like(parseJson(t, r), { ok: true });
    t.is(await harm(target), '');
    await target.settle();
    t.deepEqual(await snapshot(target.pid), before);
  },
);

// ---- predump killed while a thread of the target is itself being killed or exec'ing ----------

const RACER = fileURLToPath(new URL('fixtures/racer.py', import.meta.url));
const PYTHON = [
  '/usr/bin/python3',
  ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, 'python3')),
].find((p) => existsSync(p));

type Line = Record<string, unknown>;

interface Racer {
  pid: number;
  busy: number[];
  /** The fds it was started with (its waiting parent's: inherited ones included). */
  startFds: string;
  /** The first line (printed already or still to come) that `match` accepts; rejects after `ms`. */
  line(match: (l: Line) => boolean, ms?: number): Promise<Line>;
  send(command: string): void;
  /** Ends it: EOF on its stdin, SIGKILL by pid if it still runs 5 s later. */
  end(): Promise<void>;
}

/** Starts fixtures/racer.py (it forks: the target is a grandchild of ours). */
async function startRacer(t: T): Promise<Racer> {
  const child = spawn(PYTHON!, [RACER], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: Line[] = [];
  let closed = false;
  const waiters: { match: (l: Line) => boolean; resolve: (l: Line) => void }[] = [];
  createInterface({ input: child.stdout }).on('line', (text) => {
    const l = JSON.parse(text) as Line;
    lines.push(l);
    for (const w of waiters.filter((w) => w.match(l))) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(l);
    }
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  void exited.then(() => (closed = true));
  const line = (match: (l: Line) => boolean, ms = 20_000): Promise<Line> => {
    const seen = lines.find(match);
    if (seen) return Promise.resolve(seen);
    if (closed) return Promise.reject(new Error('racer.py exited'));
    return new Promise((resolve, reject) => {
      // Only a bound for a target that hangs: a live one answers at once.
      const timer = setTimeout(() => reject(new Error(`racer.py: no such line in ${ms} ms`)), ms);
      waiters.push({
        match,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  };
  const ready = (await line((l) => l['ready'] === true)) as { pid: number; busy: number[] };
  let ended = false;
  const end = async (): Promise<void> => {
    if (ended) return;
    ended = true;
    child.stdin.end();
    const timer = setTimeout(() => {
      // While its waiting parent (our child) lives, the pid is still the fixture's.
      if (!closed) process.kill(ready.pid, 'SIGKILL');
    }, 5000);
    await exited;
    clearTimeout(timer);
  };
  t.teardown(end);
  const startFds = (await readdir(`/proc/${child.pid}/fd`)).sort().join(' ');
  return {
    pid: ready.pid,
    busy: ready.busy,
    startFds,
    line,
    send: (command) => child.stdin.write(`${command}\n`),
    end,
  };
}

/** The racer's commands to kill: a splice pre-dump, or a first uffd-wp tracked one. */
function raceCommand(trial: number, pid: number, dir: string): string[] {
  const splice = trial % 2 === 0 || !UFFD_WP;
  return splice
    ? ['pre-dump', '-t', String(pid), '-D', dir, '--pre-dump-mode', 'splice', '--json']
    : preDump(pid, dir, 'uffd-wp');
}

test.serial(
  'SIGKILL of the CLI while a target thread is being killed: the target ends as that kill alone ends it',
  async (t) => {
    const tmp = await tempDir(t);
    const notes: string[] = [];
    let killedMidRun = 0;
    for (let trial = 0; trial < RACES; trial++) {
      const r = await startRacer(t);
      const dir = path.join(tmp, `kill-${trial}`);
      const cli = startCli(raceCommand(trial, r.pid, dir));
      let cliEnded = false;
      void cli.done.then(() => (cliEnded = true));
      while (!cliEnded && ((await procState(r.pid))?.tracerPid ?? 0) === 0);
      // Deliberate random moments: the thread's kill, then predump's, inside the run.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 30));
      process.kill(r.busy[trial % 2]!, 'SIGKILL');
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 10));
      cli.child.kill('SIGKILL');
      if ((await cli.done).code !== 0) killedMidRun++;
      // The target's own parent reports how it ended: by that SIGKILL, nothing else.
      const ended = await r.line((l) => l['ended'] !== undefined).catch((e: Error) => e);
      if (ended instanceof Error || ended['ended'] !== 'killed' || ended['signal'] !== 9) {
        notes.push(
          `trial ${trial}: ${ended instanceof Error ? ended.message : JSON.stringify(ended)}`,
        );
      } else if (ended['core'] !== false) {
        notes.push(`trial ${trial}: dumped core`);
      }
      await r.end();
      await rm(dir, { recursive: true, force: true });
    }
    t.log(`${RACES} targets killed during a run, ${killedMidRun} runs SIGKILLed before their end`);
    t.deepEqual(notes, [], 'each target ended killed by SIGKILL, without a core dump');
    t.true(killedMidRun > 0, 'some kills came in the middle of a run');
  },
);

test.serial(
  "SIGKILL of the CLI while a target thread exec's: the new program runs, untraced, with nothing of ours",
  async (t) => {
    const tmp = await tempDir(t);
    const notes: string[] = [];
    let killedMidRun = 0;
    let before = 0;
    for (let trial = 0; trial < RACES; trial++) {
      const r = await startRacer(t);
      const dir = path.join(tmp, `exec-${trial}`);
      // Half the trials arm the exec a random 0-800 ms ahead as predump starts (node starts
      // in a few hundred ms: before the seize, while predump holds the target, or after);
      // the others once predump has seized it, 0-30 ms ahead: the busy thread execs as soon
      // as it runs again (splice mode's thaw before its drain, or predump's death).
      const early = trial % 4 < 2;
      if (early) {
        r.send(`exec ${Math.floor(Math.random() * 800)}`);
        await r.line((l) => l['exec'] === 'armed');
      }
      const cli = startCli(raceCommand(trial, r.pid, dir));
      let cliEnded = false;
      void cli.done.then(() => (cliEnded = true));
      let execd = false;
      void r
        .line((l) => l['execd'] === true)
        .then(
          () => (execd = true),
          () => undefined,
        );
      while (!cliEnded && !execd && ((await procState(r.pid))?.tracerPid ?? 0) === 0);
      if (!early) r.send(`exec ${Math.floor(Math.random() * 30)}`);
      const execFirst = execd;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 40));
      cli.child.kill('SIGKILL');
      if ((await cli.done).code !== 0) killedMidRun++;
      const e = await r.line((l) => l['execd'] === true).catch((err: Error) => err);
      if (e instanceof Error) {
        notes.push(`trial ${trial}: the exec'd program never came: ${e.message}`);
        await r.end();
        continue;
      }
      if (execFirst) before++;
      // A dead run's leftovers in the new program (if predump seized it after the exec) are
      // removed by the next command, as on any target.
      const u = await runCli(['untrack', '-t', String(r.pid), '--json']);
      if (u.code !== 0) notes.push(`trial ${trial}: untrack: exit ${u.code}: ${u.stderr}`);
      const held = await heldThreads(r.pid);
      if (held.length > 0) notes.push(`trial ${trial}: ${held.join(', ')}`);
      const word = `w${trial}`;
      r.send(`echo ${word}`);
      const echo = await r.line((l) => l['echo'] === word).catch((err: Error) => err);
      if (echo instanceof Error) notes.push(`trial ${trial}: no echo: ${echo.message}`);
      // Only the fds it was started with (not close-on-exec): no fd of ours.
      const fds = (await readdir(`/proc/${r.pid}/fd`).catch(() => [] as string[])).sort();
      if (fds.join(' ') !== r.startFds) {
        notes.push(`trial ${trial}: fds ${fds.join(' ')} (started with ${r.startFds})`);
      }
      r.send('bye'); // ignored; EOF ends it
      await r.end();
      const ended = await r.line((l) => l['ended'] !== undefined).catch((err: Error) => err);
      if (ended instanceof Error || ended['ended'] !== 'exited' || ended['code'] !== 0) {
        notes.push(
          `trial ${trial}: ended ${ended instanceof Error ? ended.message : JSON.stringify(ended)}`,
        );
      }
      await rm(dir, { recursive: true, force: true });
    }
    t.log(
      `${RACES} targets exec'd during a run (${before} seen before predump had seized them), ` +
        `${killedMidRun} runs SIGKILLed before their end`,
    );
    t.deepEqual(notes, [], 'each new program ran, untraced, answering, with no fd of ours');
    t.true(killedMidRun > 0, 'some kills came in the middle of a run');
  },
);
