/**
 * What predump refuses, and how it says so: exit status, message, JSON error code; and,
 * in every case with a live target, that the target runs on untraced and unharmed.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';

import { type ErrorCode, PredumpError } from '../ts/errors.js';
import { native } from '../ts/native.js';
import { preDump } from '../ts/predump.js';
import {
  assertCliError,
  assertRunningUntraced,
  checkImagesDir,
  fingerprint,
  freePid,
  MiB,
  mkfifo,
  mountTmpfs,
  NODE,
  BIN,
  PAGE,
  parseJson,
  procState,
  reachGate,
  runCli,
  snapshot,
  startCli,
  startProcess,
  startWorkload,
  statState,
  tempDir,
  type Target,
} from './helpers.js';

/** A process's command name, or undefined once it is gone. */
async function comm(pid: number): Promise<string | undefined> {
  return readFile(`/proc/${pid}/comm`, 'utf8').then(
    (c) => c.trim(),
    () => undefined,
  );
}

/** The target is alive, untraced, its memory map unchanged and its own check ok. */
async function assertUnharmed(
  t: ExecutionContext,
  target: Target,
  before?: Awaited<ReturnType<typeof snapshot>>,
): Promise<void> {
  await assertRunningUntraced(t, target.pid);
  if (before) t.deepEqual(await snapshot(target.pid), before);
  t.like(await target.w.selfCheck(), { ok: true, mismatches: 0, computeErrors: 0 });
}

/** Expects `p` to reject with a PredumpError of `code`. */
async function rejectsWith(
  t: ExecutionContext,
  p: Promise<unknown>,
  code: ErrorCode,
  message: RegExp,
): Promise<void> {
  const err = await t.throwsAsync(p);
  t.true(err instanceof PredumpError, String(err));
  t.is((err as PredumpError).code, code);
  t.regex(err!.message, message);
}

// ---- which process --------------------------------------------------------------------------

test('no such pid: exit 1, ESRCH, and no directory left behind', async (t) => {
  const pid = await freePid();
  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', String(pid), '-D', dir, '--json']);
  assertCliError(t, r, { exit: 1, code: 'ESRCH', message: new RegExp(`no such process: ${pid}`) });
  t.false(existsSync(dir), 'the directory the tool made is removed again');
  // Without --json: the same message, nothing on stdout.
  const plain = await runCli(['pre-dump', '-t', String(pid), '-D', dir]);
  t.is(plain.code, 1);
  t.is(plain.stdout, '');
  t.regex(plain.stderr, /predump: error: no such process/);
});

// An option given twice: the last one counts (CRIU's getopt does the same), never a
// value of the wrong type passed on.
test('an option given twice: the last one counts', async (t) => {
  const pid = await freePid();
  const dir = path.join(await tempDir(t), 'images');
  const bad = await runCli([
    'pre-dump',
    '-t',
    String(pid),
    '-D',
    dir,
    '--track-mem',
    'none',
    '--track-mem',
    'bogus',
  ]);
  t.is(bad.code, 2, bad.stderr);
  t.regex(bad.stderr, /Invalid values:\s+Argument: track-mem, Given: "bogus"/);
  const good = await runCli([
    'pre-dump',
    '-t',
    String(pid),
    '-D',
    dir,
    '--track-mem',
    'bogus',
    '--track-mem',
    'none',
    '--json',
  ]);
  assertCliError(t, good, {
    exit: 1,
    code: 'ESRCH',
    message: new RegExp(`no such process: ${pid}`),
  });
});

test('our own pid through the API: ESELF', async (t) => {
  const dir = path.join(await tempDir(t), 'images');
  await rejectsWith(t, preDump({ pid: process.pid, imagesDir: dir }), 'ESELF', /itself/);
  t.false(existsSync(dir));
  await assertRunningUntraced(t, process.pid);
});

test('the CLI pointed at its own pid: exit 1, ESELF', async (t) => {
  const dir = path.join(await tempDir(t), 'images');
  // exec: the shell's $$ becomes the CLI's pid.
  const p = startProcess('sh', ['-c', `exec "${NODE}" "${BIN}" pre-dump -t $$ -D "${dir}" --json`]);
  const cliPid = p.child.pid!;
  const r = await p.done;
  const j = assertCliError(t, r, { exit: 1, code: 'ESELF', message: /predump itself/ });
  t.regex(j.error.message, new RegExp(`process ${cliPid} `));
  t.false(existsSync(dir));
});

test('kthreadd (pid 2): exit 1, EKTHREAD', async (t) => {
  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', '2', '-D', dir, '--json']);
  assertCliError(t, r, { exit: 1, code: 'EKTHREAD', message: /process 2 is a kernel thread/ });
  t.false(existsSync(dir));
  t.is((await procState(2))?.tracerPid, 0);
});

// A thread id has a /proc entry of its own; the images must never be named after it.
test.serial('a thread id that is not a process id: ETHREAD, no images', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 1 });
  const tid = (await readdir(`/proc/${target.pid}/task`)).map(Number).find((n) => n !== target.pid);
  t.truthy(tid);
  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', String(tid), '-D', dir, '--json']);
  await assertUnharmed(t, target);
  t.false(existsSync(dir), 'no image set named after a thread');
  t.is(r.code, 1, r.stderr);
  const j = parseJson<{ ok: boolean; error?: { code: string; message: string } }>(t, r);
  t.false(j.ok);
  t.is(j.error?.code, 'ETHREAD');
  t.regex(r.stderr, new RegExp(`${tid} is a thread of process ${target.pid}`));
});

test('a zombie: exit 1, EZOMBIE', async (t) => {
  // The background child exits when we write a line to it, once its parent has become
  // `sleep 1000`, which never reaps it (exiting earlier, sh could reap it itself).
  // (A background job's stdin is /dev/null unless redirected: hence fd 3.)
  const parent = spawn('sh', ['-c', 'exec 3<&0; read go <&3 & echo $!; exec sleep 1000'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => parent.once('exit', resolve));
  t.teardown(async () => {
    parent.kill('SIGKILL'); // by pid: ChildProcess.kill signals its own pid
    await exited;
  });
  const rl = createInterface({ input: parent.stdout! });
  const zombie = Number(await new Promise<string>((resolve) => rl.once('line', resolve)));
  t.true(zombie > 0);
  for (let i = 0; i < 1000 && (await comm(parent.pid!)) !== 'sleep'; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10)); // bounded re-read of /proc
  }
  t.is(await comm(parent.pid!), 'sleep', 'the parent exec-ed');
  t.not(await statState(zombie), 'Z', 'the child waits for our line');
  parent.stdin!.write('go\n');
  let state: string | undefined;
  for (let i = 0; i < 1000 && (state = await statState(zombie)) !== 'Z'; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10)); // bounded re-read of /proc
  }
  t.is(state, 'Z', 'the child became a zombie');

  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', String(zombie), '-D', dir, '--json']);
  assertCliError(t, r, { exit: 1, code: 'EZOMBIE', message: /is a zombie/ });
  t.false(existsSync(dir));
  t.is(await statState(zombie), 'Z');
  await assertRunningUntraced(t, parent.pid!);
});

test('a direct child of the caller through the API: ECHILDTARGET', async (t) => {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  t.teardown(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  const dir = path.join(await tempDir(t), 'images');
  await rejectsWith(
    t,
    preDump({ pid: child.pid!, imagesDir: dir }),
    'ECHILDTARGET',
    new RegExp(`process ${child.pid} is a child of this process`),
  );
  t.false(existsSync(dir));
  await assertRunningUntraced(t, child.pid!);
  t.is(child.exitCode, null);
});

const unprivileged = ['--reuid=65534', '--regid=65534', '--clear-groups'];
let nobodyCanRun = false;
try {
  execFileSync(
    'setpriv',
    [
      ...unprivileged,
      NODE,
      '-e',
      `require('fs').accessSync(${JSON.stringify(BIN)}, require('fs').constants.R_OK)`,
    ],
    { stdio: 'ignore' },
  );
  nobodyCanRun = process.getuid?.() === 0;
} catch {
  nobodyCanRun = false;
}

(nobodyCanRun ? test.serial : test.skip)(
  'an unprivileged user against a root process: exit 1, EPERM',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
    const before = await snapshot(target.pid);
    const tmp = await tempDir(t);
    await chown(tmp, 65534, 65534); // so that EDIR does not come first
    const dir = path.join(tmp, 'images');
    const p = startProcess('setpriv', [
      ...unprivileged,
      NODE,
      BIN,
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      dir,
      '--json',
    ]);
    const r = await p.done;
    assertCliError(t, r, {
      exit: 1,
      code: 'EPERM',
      message: new RegExp(`not permitted to \\w+ process ${target.pid}: Permission denied`),
    });
    t.regex(r.stderr, /run as root/);
    t.false(existsSync(dir));
    await assertUnharmed(t, target, before);
  },
);

// Root, but without CAP_SYS_PTRACE (as in a container that drops it), against a process
// of ours holding every capability: the message says what the kernel weighed, not
// "run as root".
test.serial(
  'root without CAP_SYS_PTRACE against a more privileged process: exit 1, EPERM, why',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
    const before = await snapshot(target.pid);
    const dir = path.join(await tempDir(t), 'images');
    const p = startProcess('setpriv', [
      '--inh-caps=-sys_ptrace',
      '--bounding-set=-sys_ptrace',
      NODE,
      BIN,
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      dir,
      '--json',
    ]);
    const r = await p.done;
    assertCliError(t, r, {
      exit: 1,
      code: 'EPERM',
      message: new RegExp(
        `not permitted to \\w+ process ${target.pid}: [^:]+: ` +
          `process ${target.pid} holds capabilities predump lacks \\(cap_sys_ptrace\\), and without ` +
          'CAP_SYS_PTRACE a tracer may trace only a process whose capabilities are a subset of ' +
          'its own \\(predump runs as root without CAP_SYS_PTRACE',
      ),
    });
    t.notRegex(r.stderr, /run as root|yama/i);
    t.false(existsSync(dir));
    await assertUnharmed(t, target, before);
  },
);

// Root with every capability, but those of a user namespace of its own (issue 16, item 6: a
// container's root against a process outside it, pid 1 of the host): the message names the
// namespace, not "run as root" nor rules that would allow it.
test.serial(
  'root of a user namespace of its own against a process outside it: exit 1, EPERM, why',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
    const before = await snapshot(target.pid);
    const dir = path.join(await tempDir(t), 'images');
    const p = startProcess('unshare', [
      '--user',
      '--map-root-user',
      NODE,
      BIN,
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      dir,
      '--json',
    ]);
    const r = await p.done;
    assertCliError(t, r, {
      exit: 1,
      code: 'EPERM',
      message: new RegExp(
        `not permitted to \\w+ process ${target.pid}: [^:]+: predump runs in a user namespace of ` +
          'its own \\(uid_map 0 \\d+ 1\\), in which its root and capabilities, CAP_SYS_PTRACE ' +
          `among them, count only for the processes of that namespace, and process ${target.pid} ` +
          'is outside it: run predump in the process.s user namespace',
      ),
    });
    t.notRegex(r.stderr, /run as root|yama|rules allow/i);
    t.false(existsSync(dir));
    await assertUnharmed(t, target, before);
  },
);

test.serial('a target traced by another tracer (strace): exit 1, ETRACED', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
  const strace = spawn('strace', ['-f', '-e', 'trace=none', '-p', String(target.pid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const straceExited = new Promise((resolve) => strace.once('exit', resolve));
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) strace.kill('SIGKILL');
    await straceExited;
  });
  const spawnError = await new Promise<Error | undefined>((resolve) => {
    strace.once('spawn', () => resolve(undefined));
    strace.once('error', resolve);
  });
  if (spawnError) {
    t.log(`strace not available: ${spawnError.message}`);
    t.pass();
    return;
  }
  // strace says when it has attached.
  const rl = createInterface({ input: strace.stderr! });
  await new Promise<void>((resolve) =>
    rl.on('line', (l) => {
      if (/attached/.test(l)) resolve();
    }),
  );
  t.is((await procState(target.pid))?.tracerPid, strace.pid);

  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', dir, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'ETRACED',
    message: new RegExp(`process ${target.pid} .*already traced by pid ${strace.pid}`),
  });
  t.false(existsSync(dir));
  // strace detaches when interrupted; then no one traces the target.
  strace.kill('SIGINT');
  stopped = true;
  await straceExited;
  await assertUnharmed(t, target);
});

// ---- the images directory -------------------------------------------------------------------

test.serial('images directory errors: EDIR and EDIREXISTS, target unharmed', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
  const before = await snapshot(target.pid);
  const tmp = await tempDir(t);
  const pid = String(target.pid);

  // Its parent is missing.
  const orphan = path.join(tmp, 'missing', 'images');
  let r = await runCli(['pre-dump', '-t', pid, '-D', orphan, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'EDIR',
    message: /cannot create images directory .*: its parent .*missing does not exist/,
  });
  t.false(existsSync(path.dirname(orphan)));

  // Its parent is a regular file.
  const file = path.join(tmp, 'a-file');
  await writeFile(file, 'x');
  r = await runCli(['pre-dump', '-t', pid, '-D', path.join(file, 'images'), '--json']);
  assertCliError(t, r, { exit: 1, code: 'EDIR', message: /not a directory/i });

  // It is a regular file.
  r = await runCli(['pre-dump', '-t', pid, '-D', file, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'EDIR',
    message: new RegExp(`images directory ${file} is not a directory`),
  });

  // It is not writable: a read-only mount (root passes every W_OK test otherwise).
  const ro = path.join(tmp, 'ro');
  await mkdir(ro);
  await mountTmpfs(t, ro, 'ro,size=1M');
  r = await runCli(['pre-dump', '-t', pid, '-D', ro, '--json']);
  assertCliError(t, r, { exit: 1, code: 'EDIR', message: /is not writable/ });
  r = await runCli(['pre-dump', '-t', pid, '-D', path.join(ro, 'sub'), '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'EDIR',
    message: /cannot create images directory .*read-only file system/,
  });
  t.deepEqual(await readdir(ro), []);

  // It already holds images: refused, and they are left exactly as they were.
  const full = path.join(tmp, 'done');
  r = await runCli(['pre-dump', '-t', pid, '-D', full, '--track-mem', 'none', '--json']);
  t.is(r.code, 0, r.stderr);
  const prints = await fingerprint(full);
  r = await runCli(['pre-dump', '-t', pid, '-D', full, '--json']);
  assertCliError(t, r, {
    exit: 1,
    code: 'EDIREXISTS',
    message: /already holds images \(inventory\.img, pagemap-\d+\.img, pages-1\.img, …\)/,
  });
  t.deepEqual(await fingerprint(full), prints);
  // Even one leftover image file is enough.
  const one = path.join(tmp, 'one');
  await mkdir(one);
  await writeFile(path.join(one, 'pages-1.img'), 'old');
  const onePrints = await fingerprint(one);
  r = await runCli(['pre-dump', '-t', pid, '-D', one, '--json']);
  assertCliError(t, r, { exit: 1, code: 'EDIREXISTS', message: /already holds images/ });
  t.deepEqual(await fingerprint(one), onePrints);

  await assertUnharmed(t, target, before);
});

test.serial('disk full: exit 1, ENOSPC, nothing left in the directory', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 64 * MiB, threads: 1 });
  const before = await snapshot(target.pid);
  const mnt = path.join(await tempDir(t), 'small');
  await mkdir(mnt);
  await mountTmpfs(t, mnt, 'size=2M');

  // Into the (existing) mount point itself.
  let r = await runCli(['pre-dump', '-t', String(target.pid), '-D', mnt, '--json']);
  assertCliError(t, r, { exit: 1, code: 'ENOSPC', message: /no space left while writing/ });
  t.deepEqual(await readdir(mnt), [], 'no inventory, no pages, no pagemap, no temporary file');
  t.is((await stat(mnt)).isDirectory(), true);

  // Into a directory the tool creates: removed again.
  const sub = path.join(mnt, 'images');
  r = await runCli(['pre-dump', '-t', String(target.pid), '-D', sub, '--json']);
  assertCliError(t, r, { exit: 1, code: 'ENOSPC', message: /no space left while writing/ });
  t.deepEqual(await readdir(mnt), []);

  await assertUnharmed(t, target, before);
});

test.serial('disk full while writing the pagemap and stats: ENOSPC, nothing left', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
  const tmp = await tempDir(t);
  // How big the pages file of this (idle) target is...
  const ref = path.join(tmp, 'ref');
  const first = await runCli(['pre-dump', '-t', String(target.pid), '-D', ref, '--json']);
  t.is(first.code, 0, first.stderr);
  const bytes = (await stat(path.join(ref, 'pages-1.img'))).size;
  // ...so that a file system with room for it alone fills up while the core writes the
  // pagemap (once the pages are synced), and one with room for one more block (the pagemap)
  // while the control plane writes its own files (the tracking record, stats-dump).
  for (const [name, size] of [
    ['exact', bytes],
    ['tight', bytes + PAGE],
  ] as const) {
    const mnt = path.join(tmp, name);
    await mkdir(mnt);
    await mountTmpfs(t, mnt, `size=${size}`);
    const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', mnt, '--json']);
    assertCliError(t, r, { exit: 1, code: 'ENOSPC', message: /no space left while writing/ });
    t.log(name, r.stderr.trim());
    t.deepEqual(await readdir(mnt), [], `${name}: the pages file and the pagemap were removed`);
  }
  await assertUnharmed(t, target);
});

// ---- the command line -----------------------------------------------------------------------

test('missing -t or -D: exit 2 with yargs message', async (t) => {
  const dir = path.join(await tempDir(t), 'images');
  let r = await runCli(['pre-dump', '-D', dir]);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Missing required argument: tree/);
  r = await runCli(['pre-dump', '-t', String(process.pid)]);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Missing required argument: images-dir/);
  r = await runCli(['pre-dump']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Missing required arguments: tree, images-dir/);
  r = await runCli(['pre-dump', '-t', '1', '-D', dir, '--no-such-option']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Unknown argument/);
  r = await runCli([]);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Say which command to run/);
  t.false(existsSync(dir));
});

test('-t abc: exit 2 with a usage message', async (t) => {
  const dir = path.join(await tempDir(t), 'images');
  const r = await runCli(['pre-dump', '-t', 'abc', '-D', dir]);
  t.false(existsSync(dir));
  t.regex(r.stderr, /abc|tree|-t/);
  t.is(r.code, 2, r.stderr);
  t.notRegex(r.stderr, /NaN/);
});

// A script that asked for --json gets a usage error as JSON too.
test('a usage error with --json prints EUSAGE JSON and exits 2', async (t) => {
  const r = await runCli(['pre-dump', '-D', '/nonexistent-predump-dir', '--json']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /Missing required argument: tree/);
  const j = parseJson<{ ok: boolean; error: { code: string } }>(t, r);
  t.is(j.ok, false);
  t.is(j.error.code, 'EUSAGE');
});

// A bad option value found by a command is a usage error too: exit 2.
test('demo --size abc: EUSAGE with exit status 2', async (t) => {
  const r = await runCli(['demo', '--size', 'abc', '--json']);
  assertCliError(t, r, { exit: 2, code: 'EUSAGE', message: /--size must be a size/ });
});

// ---- the target dies in the middle of the drain ---------------------------------------------

test.serial(
  'target killed in the middle of the drain: exit 3, a complete partial image',
  async (t) => {
    const size = 64 * MiB;
    const target = await startWorkload(t, { sizeBytes: size, threads: 2 });
    const tmp = await tempDir(t);
    const gate = path.join(tmp, 'gate');
    await mkfifo(gate);
    const dir = path.join(tmp, 'images');
    const cli = startCli(['pre-dump', '-t', String(target.pid), '-D', dir, '--json'], {
      PREDUMP_TEST_DRAIN_GATE: gate,
    });
    t.teardown(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    const fh = await reachGate(gate, cli);
    try {
      await target.kill();
      t.false(existsSync(`/proc/${target.pid}`), 'the target is gone');
      await fh.write(Buffer.from('x'));
    } finally {
      await fh.close();
    }
    const r = await cli.done;
    t.is(r.code, 3, r.stderr);
    t.regex(r.stderr, /exited during the copy: the images are a partial pre-dump/);
    const j = parseJson<{
      ok: boolean;
      partial: boolean;
      pagesWritten: number;
      pagesPresent: number;
      bytesWritten: number;
    }>(t, r);
    t.true(j.ok);
    t.true(j.partial);
    t.true(j.pagesWritten > 0, 'the first part was copied');
    t.true(j.pagesWritten < j.pagesPresent, 'the rest was not');
    t.is(j.bytesWritten, j.pagesWritten * PAGE);

    // The partial set is complete and consistent, and what it holds is right.
    const { dir: d, presentPages } = await checkImagesDir(t, dir, target.pid);
    t.is(presentPages, j.pagesWritten);
    const check = await native.checkPattern(
      path.join(dir, 'pages-1.img'),
      new Float64Array(d.entries.flatMap((e) => [e.vaddr, e.nrPages])),
      new Float64Array([target.w.data.start, target.w.data.bytes]),
      new Float64Array(),
    );
    t.is(check.mismatches, 0);
    t.is(check.trailingBytes, 0);
    const s = parseJson<{ complete: boolean; pagesPresent: number }>(
      t,
      await runCli(['show', dir, '--json']),
    );
    t.true(s.complete);
    t.is(s.pagesPresent, j.pagesWritten);
  },
);
