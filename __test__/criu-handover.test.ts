/**
 * Handing a process to CRIU after uffd-wp tracking: `criu dump` refuses a process
 * holding a userfaultfd, so what to run before it (`predump untrack`, or
 * `predump dump`) is said wherever a user looks: the pre-dump's output where uffd-wp
 * is used, --help, `check` (check.test.ts). The host has uffd-wp and no soft-dirty:
 * `--track-mem auto` takes uffd-wp here. (criu itself runs in the VM:
 * .ci/vm-scenarios/criu-uffd-wp.sh.)
 */
import test from 'ava';
import path from 'node:path';
import { MiB, parseJson, runCli, startWorkload, tempDir } from './helpers.js';

test.serial('a pre-dump with uffd-wp tracking says what criu dump needs first', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0 });
  const tmp = await tempDir(t);
  t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
  const pid = String(target.pid);
  const r = await runCli(['pre-dump', '-t', pid, '-D', path.join(tmp, '1'), '--json']);
  t.is(r.code, 0, r.stderr);
  t.is(parseJson<{ trackBackend: string }>(t, r).trackBackend, 'uffd-wp');
  t.regex(
    r.stderr,
    new RegExp(
      `process ${pid} now holds predump's userfaultfd .*'criu dump' refuses .*` +
        `run 'predump untrack -t ${pid}' .*or close the chain with 'predump dump'`,
    ),
  );
  // Untracked: nothing to say.
  const none = await runCli([
    'pre-dump',
    '-t',
    pid,
    '-D',
    path.join(tmp, '2'),
    '--track-mem',
    'none',
  ]);
  t.is(none.code, 0, none.stderr);
  t.notRegex(none.stderr, /criu dump/);
  const u = await runCli(['untrack', '-t', pid]);
  t.is(u.code, 0, u.stderr);
  t.regex(u.stderr, /dirty tracking ended/);
});

test('--help of predump, pre-dump and untrack says how to hand over to CRIU', async (t) => {
  const top = await runCli(['--help']);
  // Help text is wrapped to the terminal: any white space between words.
  const words = (s: string): RegExp => new RegExp(s.split(' ').join('\\s+'));
  t.regex(top.stdout, words("'criu dump --track-mem --prev-images-dir ../LAST'"));
  t.regex(top.stdout, words("run 'predump untrack -t PID' first"));
  t.regex(top.stdout, words('"Using predump with CRIU"'));
  const pre = await runCli(['pre-dump', '--help']);
  t.regex(pre.stdout, words('criu dump refuses a process holding them'));
  t.regex(pre.stdout, words('a relative path is relative to --images-dir'));
  const untrack = await runCli(['untrack', '--help']);
  t.regex(untrack.stdout, words("before 'criu dump'"));
  t.regex(untrack.stdout, words('predump untrack -t 4242 && criu dump -t 4242'));
});
