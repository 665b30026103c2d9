/**
 * `predump pre-dump|dump --page-server`: the pages of a live process sent to
 * `predump page-server` over loopback, real processes on both ends. A chain in
 * every mode (read, splice, freeze-free, then the dump) stored on the server
 * holds the process's memory page for page; TLS with certtool's certificates;
 * and every fault (refused, reset mid-stream, a server that stops reading, a
 * server whose disk fills) ends with exit 1 and a message, the target running
 * untraced with nothing of ours left in it, and no local images.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, readlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

import {
  assertCliError,
  assertRunningUntraced,
  compareChainWithMemory,
  execFileP,
  MiB,
  mountTmpfs,
  parseJson,
  runCli,
  snapshot,
  startCli,
  startWorkload,
  tempDir,
  type RunningCli,
  type Target,
  firstLine,
} from './helpers.js';

type T = ExecutionContext<unknown>;

interface Server {
  cli: RunningCli;
  port: number;
  /** The server's result line (exit 0 expected). */
  result(): Promise<Record<string, unknown>>;
}

/** `predump page-server -D dir --port 0 --json ARGS`, once it listens. */
async function startServer(t: T, dir: string, args: string[] = []): Promise<Server> {
  const cli = startCli(['page-server', '-D', dir, '--address', '127.0.0.1', '--json', ...args]);
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const line = await firstLine(cli);
  const port = (JSON.parse(line) as { listening: { port: number } }).listening.port;
  return {
    cli,
    port,
    async result() {
      const r = await cli.done;
      t.is(r.code, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    },
  };
}

const client = (port: number, ...more: string[]): string[] => [
  '--page-server',
  '--address',
  '127.0.0.1',
  '--port',
  String(port),
  '--json',
  ...more,
];

/** The local directory holds what CRIU's client keeps, and predump's record. */
async function assertLocalOnly(t: T, dir: string, parent: boolean): Promise<void> {
  const want = ['inventory.img', 'predump-track.json', 'stats-dump'];
  if (parent) want.push('parent');
  t.deepEqual((await readdir(dir)).sort(), want.sort(), dir);
}

test('a chain sent in read, splice and freeze-free modes, then dumped, is stored page for page on the server', async (t) => {
  const base = await tempDir(t);
  const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
  const pid = target.pid;
  const steps = [
    { cmd: 'pre-dump', args: ['--pre-dump-mode', 'read'] },
    { cmd: 'pre-dump', args: ['--pre-dump-mode', 'splice'] },
    { cmd: 'pre-dump', args: ['--pre-dump-mode', 'freeze-free'] },
    { cmd: 'dump', args: ['--leave-stopped'] },
  ];
  for (const [i, step] of steps.entries()) {
    const n = i + 1;
    const ps = path.join(base, `ps${n}`);
    const local = path.join(base, `local${n}`);
    const server = await startServer(t, ps, n > 1 ? ['--prev-images-dir', `../ps${n - 1}`] : []);
    const r = await runCli([
      step.cmd,
      '-t',
      String(pid),
      '-D',
      local,
      ...(n > 1 ? ['--prev-images-dir', path.join(base, `local${n - 1}`)] : []),
      ...step.args,
      ...client(server.port),
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<Record<string, unknown>>(t, r);
    const res = await server.result();
    const pm = (res.pagemaps as Record<string, number>[])[0]!;
    t.like(j, {
      ok: true,
      pageServer: { port: server.port, format: 'criu-4.2', tls: false, hasParent: n > 1 },
    });
    t.is(pm.pagesPresent, j.pagesWritten as number, `${step.cmd} ${step.args.join(' ')}`);
    t.is(pm.pagesParent, j.pagesSkippedParent as number);
    if (n > 1) t.true(pm.pagesParent! > 0, 'unchanged pages were left to the parent');
    await assertLocalOnly(t, local, n > 1);
    if (n > 1) t.is(await readlink(path.join(ps, 'parent')), `../ps${n - 1}`);
    // Some pages change before the next one.
    if (n < steps.length) await target.w.command(`dirty-range ${n * 256} 128`);
  }
  // The dump left the target stopped: the server's chain equals its memory.
  const cmp = await compareChainWithMemory(path.join(base, 'ps4'), pid);
  t.true(cmp.pages > 4096, `${cmp.pages} pages compared`);
  t.deepEqual(cmp.mismatches, []);
  process.kill(pid, 'SIGCONT');
});

/** A CA and a certificate for 127.0.0.1 (both uses) made with certtool in `base`/pki: the
 * `--tls*` options of both ends. */
async function makeTls(base: string): Promise<string[]> {
  const pki = path.join(base, 'pki');
  await mkdir(pki);
  const certtool = (...args: string[]): Promise<unknown> =>
    execFileP('certtool', args, { cwd: pki });
  await certtool('--generate-privkey', '--outfile', 'ca.key');
  await execFileP(
    'sh',
    [
      '-c',
      `printf 'cn = "test CA"\\nca\\ncert_signing_key\\nexpiration_days = 2\\n' >ca.tmpl; ` +
        `printf 'cn = "127.0.0.1"\\nip_address = "127.0.0.1"\\ntls_www_server\\ntls_www_client\\nsigning_key\\nencryption_key\\nexpiration_days = 2\\n' >cert.tmpl`,
    ],
    { cwd: pki },
  );
  await certtool(
    '--generate-self-signed',
    '--load-privkey',
    'ca.key',
    '--template',
    'ca.tmpl',
    '--outfile',
    'ca.pem',
  );
  await certtool('--generate-privkey', '--outfile', 'key.pem');
  await certtool(
    '--generate-certificate',
    '--load-privkey',
    'key.pem',
    '--load-ca-certificate',
    'ca.pem',
    '--load-ca-privkey',
    'ca.key',
    '--template',
    'cert.tmpl',
    '--outfile',
    'cert.pem',
  );
  return [
    '--tls',
    '--tls-cacert',
    path.join(pki, 'ca.pem'),
    '--tls-cert',
    path.join(pki, 'cert.pem'),
    '--tls-key',
    path.join(pki, 'key.pem'),
  ];
}

test('TLS both ways with certtool certificates, the names checked', async (t) => {
  const base = await tempDir(t);
  const tls = await makeTls(base);
  const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 1 });
  const server = await startServer(t, path.join(base, 'ps'), tls);
  const r = await runCli([
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    path.join(base, 'local'),
    '--track-mem',
    'none',
    ...client(server.port, ...tls),
  ]);
  t.is(r.code, 0, r.stderr);
  const res = await server.result();
  t.like(res, { tls: true });
  t.like(parseJson(t, r), { pageServer: { tls: true } });
  t.is(
    (res.pagemaps as Record<string, number>[])[0]!.pagesPresent,
    parseJson<{ pagesWritten: number }>(t, r).pagesWritten,
  );
  await assertRunningUntraced(t, target.pid);
});

/**
 * Runs a pre-dump of `target` that must fail with `message`, then checks what a
 * failure must leave: the target running, untraced, its memory map and files as
 * before (no tracking left), and no local images directory.
 */
async function failingPreDump(
  t: T,
  target: Target,
  args: string[],
  message: RegExp,
  env: NodeJS.ProcessEnv = {},
): Promise<void> {
  const before = await snapshot(target.pid);
  const local = path.join(await tempDir(t), 'local');
  const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', local, ...args], env);
  assertCliError(t, r, { exit: 1, code: 'ECONN', message });
  t.false(existsSync(local), 'the local images were removed');
  await assertRunningUntraced(t, target.pid);
  t.deepEqual(await snapshot(target.pid), before, 'nothing of ours is left in the target');
}

/**
 * A fake page server: answers PS_IOV_PARENT (no parent) and PS_IOV_OPEN2 as
 * CRIU's does, then `after(socket, bytesSoFar)` on every later chunk it reads.
 */
async function fakeServer(
  t: T,
  after: (sock: net.Socket, received: number) => void,
): Promise<number> {
  const server = net.createServer((sock) => {
    let received = 0;
    let answered = 0;
    sock.on('data', (chunk) => {
      received += chunk.length;
      // 32-byte headers (criu-4.2): PARENT, then OPEN2.
      if (answered === 0 && received >= 32) {
        sock.write(Buffer.alloc(4));
        answered = 1;
      }
      if (answered === 1 && received >= 64) {
        sock.write(Buffer.alloc(1));
        answered = 2;
        return;
      }
      if (answered === 2) after(sock, received);
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

test('a refused connection fails before the target is touched', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 1 });
  // A port that was just free: nothing listens there.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  await failingPreDump(
    t,
    target,
    client(port),
    /connecting to the page server at 127\.0\.0\.1:\d+: Connection refused/,
  );
});

test('a connection reset mid-stream ends the pre-dump with exit 1, the target thawed and untouched', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 1 });
  const port = await fakeServer(t, (sock, received) => {
    if (received > 1 * MiB) sock.resetAndDestroy();
  });
  for (const mode of ['read', 'splice']) {
    await failingPreDump(
      t,
      target,
      [...client(port), '--pre-dump-mode', mode],
      /sending .* to the page server at 127\.0\.0\.1:\d+: the page server closed the connection/,
    );
  }
});

test('a page server that stops reading is given up after --page-server-timeout', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 1 });
  const port = await fakeServer(t, (sock) => sock.pause());
  await failingPreDump(
    t,
    target,
    [...client(port, '--page-server-timeout', '2'), '--pre-dump-mode', 'read'],
    /to the page server at 127\.0\.0\.1:\d+: the page server read nothing for 2 s/,
  );
});

test('a page server whose disk fills fails the client, and neither side keeps anything', async (t) => {
  const base = await tempDir(t);
  const disk = path.join(base, 'disk');
  await mkdir(disk);
  await mountTmpfs(t, disk, 'size=4m');
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 1 });
  const ps = path.join(disk, 'ps');
  const server = await startServer(t, ps);
  await failingPreDump(
    t,
    target,
    [...client(server.port), '--track-mem', 'none'],
    /to the page server at 127\.0\.0\.1:\d+: the page server closed the connection/,
  );
  const r = await server.cli.done;
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /no space left/i);
  t.false(existsSync(ps), 'the server kept nothing');
});

test('over TLS too, a page server whose disk fills fails the client, and nothing is kept', async (t) => {
  const base = await tempDir(t);
  const tls = await makeTls(base);
  const disk = path.join(base, 'disk');
  await mkdir(disk);
  await mountTmpfs(t, disk, 'size=4m');
  const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 1 });
  const ps = path.join(disk, 'ps');
  const server = await startServer(t, ps, tls);
  await failingPreDump(
    t,
    target,
    [...client(server.port, ...tls), '--track-mem', 'none'],
    /to the page server at 127\.0\.0\.1:\d+: the page server closed the connection/,
  );
  const r = await server.cli.done;
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /no space left/i);
  t.false(existsSync(ps), 'the server kept nothing');
});

test('bad page-server command lines are usage errors (exit 2)', async (t) => {
  const dir = path.join(await tempDir(t), 'x');
  for (const [args, message] of [
    [['--page-server', '--port', '1'], /--page-server needs --address/],
    [['--page-server', '--address', '127.0.0.1'], /--page-server needs --port/],
    [['--page-server', '--address', '127.0.0.1', '--port', '70000'], /--page-server needs --port/],
    [['--address', '127.0.0.1'], /--address needs --page-server/],
    [['--tls'], /--tls needs --page-server/],
    [
      ['--page-server', '--address', 'h', '--port', '1', '--tls-cert', '/x'],
      /--tls-cert needs --tls/,
    ],
    [
      ['--page-server', '--address', 'h', '--port', '1', '--page-server-timeout', '0'],
      /--page-server-timeout must be a positive number/,
    ],
    [
      ['--page-server', '--address', 'h', '--port', '1', '--page-server-format', 'criu-3'],
      /Invalid values/,
    ],
  ] as const) {
    for (const cmd of ['pre-dump', 'dump']) {
      const r = await runCli([cmd, '-t', '1', '-D', dir, ...args, '--json']);
      t.is(r.code, 2, `${cmd} ${args.join(' ')}: ${r.stderr}`);
      t.regex(r.stderr, message);
    }
  }
  t.false(existsSync(dir));
});

test('a pre-dump sent to a page server cannot be the parent of a local one', async (t) => {
  const base = await tempDir(t);
  const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 1 });
  const server = await startServer(t, path.join(base, 'ps1'));
  const local1 = path.join(base, 'local1');
  let r = await runCli([
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    local1,
    ...client(server.port),
  ]);
  t.is(r.code, 0, r.stderr);
  await server.result();
  const record = JSON.parse(await readFile(path.join(local1, 'predump-track.json'), 'utf8')) as {
    pageServer: { entries: number[] };
  };
  t.true(record.pageServer.entries.length >= 3);
  const local2 = path.join(base, 'local2');
  r = await runCli([
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    local2,
    '--prev-images-dir',
    local1,
    '--json',
  ]);
  assertCliError(t, r, {
    exit: 1,
    code: 'EPARENT',
    message: /were sent to a page server: their pages are not on this host/,
  });
  t.false(existsSync(local2));
  await readFile(path.join(local1, 'inventory.img'));
});
