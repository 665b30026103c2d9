/**
 * The target survives any death of predump, in the commands other than a splice pre-dump
 * (whose kills are in splice.test.ts): the first tracked pre-dump (which makes the
 * userfaultfd and the marker inside the target), `untrack` (which closes them there) and
 * `dump`. Each trial SIGKILLs the CLI a random moment after it seized the target; the target
 * must run on unharmed, and the next command must leave it exactly as before the first run.
 * Also: predump stopped (SIGSTOP) in the middle of a run and continued finishes its run.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import path from 'node:path';
import { mkdir, rm } from 'node:fs/promises';
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

/** Kills per command; PREDUMP_KILL_TRIALS scales them as it scales the other kill tests. */
const TRIALS = Math.max(4, Math.round(Number(process.env['PREDUMP_KILL_TRIALS'] ?? 200) / 10));

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
