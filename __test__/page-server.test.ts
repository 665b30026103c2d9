/**
 * `predump page-server` from the command line: a recorded CRIU 4.2 client stream
 * replayed into it, its images read by Debian's crit, and everything it refuses
 * (a bad command line, an unusable directory or parent, a busy port, garbage on
 * the port, a signal), each with its message and exit status, and nothing kept.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  BIN,
  CRIT,
  crit,
  mkfifo,
  NODE,
  parseJson,
  runCli,
  startCli,
  startProcess,
  tempDir,
  type RunningCli,
  firstLine,
} from './helpers.js';

type T = ExecutionContext<unknown>;

const PS_REF =
  [
    path.resolve(fileURLToPath(import.meta.url), '../../../shared/criu-reference/page-server-4.2'),
    '/work/shared/criu-reference/page-server-4.2',
  ].find((p) => existsSync(p)) ?? '/work/shared/criu-reference/page-server-4.2';

/** Sends `bytes` to the port, hangs up, and returns what the server answered. */
function converse(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(port, '127.0.0.1', () => sock.end(bytes));
    sock.on('data', (c) => chunks.push(c));
    sock.on('close', () => resolve(Buffer.concat(chunks)));
    // The server may reset a connection it refuses: what it said before counts.
    sock.on('error', (e: NodeJS.ErrnoException) =>
      e.code === 'ECONNRESET' || e.code === 'EPIPE' ? undefined : reject(e),
    );
  });
}

/** Starts `predump page-server --port 0 ARGS` and waits until it listens. */
async function startServer(
  t: T,
  args: string[],
): Promise<{ cli: RunningCli; port: number; listening: string }> {
  const cli = startCli(['page-server', '--address', '127.0.0.1', ...args]);
  t.teardown(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  const listening = await firstLine(cli);
  const port = args.includes('--json')
    ? (JSON.parse(listening) as { listening: { port: number } }).listening.port
    : Number(listening);
  t.true(Number.isInteger(port) && port > 0, listening);
  return { cli, port, listening };
}

test('a recorded CRIU 4.2 pre-dump replayed into the CLI is stored as CRIU stored it, and crit reads it', async (t) => {
  const dir = path.join(await tempDir(t), 'ps1');
  const { cli, port, listening } = await startServer(t, ['-D', dir, '--json']);
  t.like(JSON.parse(listening), {
    version: 1,
    command: 'page-server',
    listening: { address: '127.0.0.1' },
  });
  const stream = await readFile(path.join(PS_REF, 'wire/s1-predump/client-to-server.bin'));
  const replies = await converse(port, stream);
  t.deepEqual([...replies], [0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const r = await cli.done;
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 2, r.stdout);
  const result = JSON.parse(lines[1]!) as Record<string, unknown>;
  t.like(result, {
    version: 1,
    command: 'page-server',
    ok: true,
    format: 'criu-4.2',
    pageBytes: 487 * 4096,
    pagemaps: [{ kind: 'process', id: 9740, entries: 35, pagesPresent: 487, hasParent: false }],
  });
  // With --json, stderr carries only warnings and errors: the summary is in the JSON.
  t.is(r.stderr, '');
  t.deepEqual((await readdir(dir)).sort(), ['pagemap-9740.img', 'pages-65537.img']);
  t.true(
    (await readFile(path.join(dir, 'pages-65537.img'))).equals(
      await readFile(path.join(PS_REF, 'images/ps1/pages-65537.img')),
    ),
  );
  // Debian's crit (3.17) knows only the old page count field: predump writes both.
  t.truthy(CRIT, 'crit (Debian package criu) is installed');
  const pm = await crit(path.join(dir, 'pagemap-9740.img'));
  t.deepEqual(pm.entries[0], { pages_id: 65537 });
  t.is(pm.entries.length, 36);
  t.like(pm.entries[2], { vaddr: 0x10000000, nr_pages: 15, flags: 6 });
});

test('--prev-images-dir makes the parent link as CRIU does, and --status-fd says when it listens', async (t) => {
  const base = await tempDir(t);
  await mkdir(path.join(base, 'ps1'));
  for (const f of ['pagemap-9740.img', 'pages-65537.img']) {
    await writeFile(path.join(base, 'ps1', f), await readFile(path.join(PS_REF, 'images/ps1', f)));
  }
  const dir = path.join(base, 'ps2');
  // The server's fd 3 is the write end of a FIFO the test reads.
  const fifo = path.join(base, 'status');
  await mkfifo(fifo);
  const reader = open(fifo, 'r');
  const server = startProcess('/bin/sh', [
    '-c',
    `exec "$0" "$@" 3>${fifo}`,
    NODE,
    BIN,
    'page-server',
    '--address',
    '127.0.0.1',
    '-D',
    dir,
    '--prev-images-dir',
    '../ps1',
    '--status-fd',
    '3',
  ]);
  t.teardown(() => {
    if (server.child.exitCode === null) server.child.kill('SIGKILL');
  });
  const portLine = firstLine(server);
  const fh = await reader;
  const status = await fh.readFile();
  await fh.close();
  // One \0, then the fd is closed (EOF), as CRIU's --status-fd.
  t.deepEqual([...status], [0]);
  const port = Number(await portLine);
  t.is(await readlink(path.join(dir, 'parent')), '../ps1');
  const stream = await readFile(path.join(PS_REF, 'wire/s2-predump-parent/client-to-server.bin'));
  const replies = await converse(port, stream);
  // "The parent holds pagemap-9740.img", twice, then the close.
  t.deepEqual([...replies], [1, 0, 0, 0, 1, 0, 0, 0, 0]);
  const r = await server.done;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /35 entries, 0 pages in pages-65537\.img, 487 left to the parent/);
});

test('bad command lines are usage errors (exit 2)', async (t) => {
  const dir = path.join(await tempDir(t), 'x');
  for (const [args, message] of [
    [['--port', '70000'], /--port must be a TCP port/],
    [['--port', 'abc'], /--port must be a TCP port/],
    [['--status-fd', '97'], /--status-fd 97: no such open file descriptor/],
    [['--timeout', '-1'], /--timeout must be a positive number/],
    [['--tls-cert', '/x.pem'], /--tls-cert needs --tls/],
    [['--tls-no-cn-verify'], /--tls-no-cn-verify needs --tls/],
  ] as const) {
    const r = await runCli(['page-server', '-D', dir, ...args, '--json']);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, message);
    t.like(parseJson(t, r), { ok: false, error: { code: 'EUSAGE' } });
  }
  t.false(existsSync(dir));
});

test('an unusable address, directory or parent is refused before anything is made', async (t) => {
  const base = await tempDir(t);
  const fresh = path.join(base, 'fresh');
  const cases: [string[], string, RegExp][] = [
    [['--address', 'localhost'], 'EINVAL', /IPv4 or IPv6 address, not a host name/],
    [['--address', '192.0.2.1'], 'ECONN', /listening on 192\.0\.2\.1:0/],
    [
      ['--prev-images-dir', '../nothing'],
      'EPARENT',
      /--prev-images-dir \.\.\/nothing: no directory .* relative path is taken from -D/,
    ],
  ];
  for (const [args, code, message] of cases) {
    const r = await runCli(['page-server', '-D', fresh, ...args, '--json']);
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, message);
    t.like(JSON.parse(r.stdout.trim().split('\n').pop()!), { ok: false, error: { code } });
    t.false(existsSync(fresh), `${args.join(' ')} made nothing`);
  }
  // A directory that holds images already, and a port in use.
  const full = path.join(base, 'full');
  await mkdir(full);
  await writeFile(path.join(full, 'pagemap-1.img'), '');
  let r = await runCli(['page-server', '-D', full]);
  t.is(r.code, 1);
  t.regex(r.stderr, /already holds images \(pagemap-1\.img\)/);
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => busy.close());
  const port = (busy.address() as net.AddressInfo).port;
  r = await runCli(['page-server', '-D', fresh, '--address', '127.0.0.1', '--port', String(port)]);
  t.is(r.code, 1);
  t.regex(r.stderr, new RegExp(`listening on 127\\.0\\.0\\.1:${port}: Address already in use`));
  t.false(existsSync(fresh));
});

test('garbage on the port is refused with a message, exit 1, and nothing is kept', async (t) => {
  const base = await tempDir(t);
  const garbage: [Buffer, RegExp][] = [
    [
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      /does not start with a CRIU page-server header/,
    ],
    [Buffer.alloc(0), /closed the connection without sending anything/],
  ];
  // A valid open, then an entry of 2^52 pages: refused before any data is read.
  const open2 = Buffer.alloc(32);
  open2.writeUInt32LE(4, 0);
  open2.writeBigUInt64LE((42n << 8n) | 1n, 24);
  const huge = Buffer.alloc(32);
  huge.writeUInt32LE(6 | (4 << 16), 0);
  huge.writeBigUInt64LE(1n << 52n, 8);
  huge.writeBigUInt64LE(0x1000n, 16);
  huge.writeBigUInt64LE((42n << 8n) | 1n, 24);
  garbage.push([
    Buffer.concat([open2, huge]),
    /header 2: 4503599627370496 pages at 0x1000 do not fit/,
  ]);
  for (const [bytes, message] of garbage) {
    const dir = path.join(base, 'ps');
    const { cli, port } = await startServer(t, ['-D', dir]);
    await converse(port, bytes);
    const r = await cli.done;
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, message);
    t.regex(r.stderr, /nothing of the session was kept/);
    t.false(existsSync(dir), 'the directory it made is gone');
  }
});

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  test(`${sig} while waiting for a client stops the server, keeping nothing`, async (t) => {
    const base = await tempDir(t);
    await mkdir(path.join(base, 'ps1'));
    const dir = path.join(base, 'ps2');
    const { cli } = await startServer(t, ['-D', dir, '--prev-images-dir', '../ps1']);
    t.true(existsSync(path.join(dir, 'parent')));
    cli.child.kill(sig);
    const r = await cli.done;
    t.is(r.code, sig === 'SIGINT' ? 130 : 143, r.stderr);
    t.regex(r.stderr, /stopped; nothing of the session was kept/);
    t.false(existsSync(dir));
  });
}

test('page-server without -D: EUSAGE, as JSON with --json', async (t) => {
  const r = await runCli(['page-server', '--json']);
  t.is(r.code, 2);
  t.like(parseJson(t, r), { ok: false, error: { code: 'EUSAGE' } });
});
