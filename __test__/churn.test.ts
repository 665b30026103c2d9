/**
 * A target whose address space keeps changing (mappings made, mprotected and unmapped by a
 * churn thread) pre-dumped again and again: every run must succeed and never write a wrong
 * page, and the target must come out of it intact.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { pagesFileName } from '../ts/images/index.js';
import {
  assertRunningUntraced,
  checkImagesDir,
  MiB,
  mkfifo,
  PAGE,
  parseJson,
  reachGate,
  runCli,
  startCli,
  startWorkload,
  tempDir,
} from './helpers.js';

const RUNS = 100;

test.serial(`a churning workload pre-dumped ${RUNS} times in a row`, async (t) => {
  const size = 16 * MiB;
  const target = await startWorkload(t, { sizeBytes: size, threads: 2, churn: true });
  t.not(target.w.churnArea, null);
  const tmp = await tempDir(t);
  const opsBefore = (await target.w.command<{ churnOps: number }>('progress')).churnOps;
  let gone = 0;
  let churnPagesChecked = 0;
  const churn = target.w.churnArea!;
  for (let i = 0; i < RUNS; i++) {
    const dir = path.join(tmp, `run-${i}`);
    const r = await runCli(['pre-dump', '-t', String(target.pid), '-D', dir, '--json']);
    if (r.code !== 0) {
      t.fail(`run ${i}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
      break;
    }
    const j = parseJson<{
      ok: boolean;
      partial: boolean;
      threads: number;
      pagesWritten: number;
      pagesGone: number;
      pagesPresent: number;
    }>(t, r);
    t.true(j.ok);
    t.false(j.partial);
    t.is(j.threads, 4, 'command, 2 compute and the churn thread');
    t.is(j.pagesWritten + j.pagesGone, j.pagesPresent, `run ${i}: every page written or gone`);
    gone += j.pagesGone;
    // crit on every tenth run keeps the loop quick; our own reader checks every run.
    const { dir: d, presentPages } = await checkImagesDir(t, dir, target.pid, {
      crit: i % 10 === 0,
    });
    t.is(presentPages, j.pagesWritten);
    const check = await target.w.checkImage(path.join(dir, pagesFileName(1)), d.entries);
    if (check.mismatches !== 0) {
      t.fail(
        `run ${i}: ${check.mismatches} wrong pages, first at ${check.firstMismatches.map((a) => '0x' + a.toString(16)).join(', ')}`,
      );
    }
    t.is(check.trailingBytes, 0);
    t.true(check.pagesChecked >= size / PAGE, `run ${i}: ${check.pagesChecked} pages checked`);
    churnPagesChecked += d.entries
      .filter(
        (e) => e.vaddr < churn.start + churn.bytes && e.vaddr + e.nrPages * PAGE > churn.start,
      )
      .reduce((n, e) => n + e.nrPages, 0);
    await rm(dir, { recursive: true, force: true });
  }
  t.log(
    `${gone} pages went away between scan and copy; ${churnPagesChecked} churn-area pages dumped`,
  );
  t.true(churnPagesChecked > 0, 'the churn area was dumped too');
  await assertRunningUntraced(t, target.pid);
  t.like(await target.w.selfCheck(), { ok: true, mismatches: 0, computeErrors: 0 });
  const progress = await target.w.command<{ churnOps: number }>('progress');
  t.log(`${progress.churnOps - opsBefore} churn operations during the pre-dumps`);
  t.true(progress.churnOps > opsBefore, 'the churn thread ran during the pre-dumps');
});

// ---- memory that goes away in the middle of a drain ------------------------------------------

const MAPPER = fileURLToPath(new URL('fixtures/mapper.py', import.meta.url));
const PYTHON = [
  '/usr/bin/python3',
  ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, 'python3')),
].find((p) => existsSync(p));

/**
 * The pages of the mapper's region in an image (as indexes into the region, in image order)
 * and how many of them do not hold their bytes.
 */
async function regionPages(
  dir: string,
  entries: { vaddr: number; nrPages: number }[],
  m: Mapper,
): Promise<{ dumped: number[]; wrong: number }> {
  const dumped: number[] = [];
  let wrong = 0;
  const pagesFile = await open(path.join(dir, pagesFileName(1)), 'r');
  try {
    let offset = 0;
    const buf = Buffer.alloc(PAGE);
    for (const e of entries) {
      for (let k = 0; k < e.nrPages; k++) {
        const i = (e.vaddr + k * PAGE - m.addr) / PAGE;
        if (i >= 0 && i < m.pages) {
          dumped.push(i);
          await pagesFile.read(buf, 0, PAGE, offset + k * PAGE);
          if (!buf.equals(Buffer.alloc(PAGE, i % 251))) wrong++;
        }
      }
      offset += e.nrPages * PAGE;
    }
  } finally {
    await pagesFile.close();
  }
  return { dumped, wrong };
}

interface Mapper {
  pid: number;
  addr: number;
  pages: number;
  command(line: string): Promise<{ ok?: boolean; errno?: number; error?: string }>;
}

/** Starts fixtures/mapper.py (it forks: the target is a grandchild of ours). */
async function startMapper(t: ExecutionContext, pages: number, stride = 1): Promise<Mapper> {
  const child = spawn(PYTHON!, [MAPPER, String(pages), String(stride)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const rl = createInterface({ input: child.stdout! });
  const lines = rl[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) throw new Error('mapper.py exited before it was ready');
  const ready = JSON.parse(first.value) as { pid: number; addr: number; pages: number };
  t.teardown(async () => {
    child.stdin!.end();
    // While its waiting parent (our child) lives, the pid is still the mapper's.
    const timer = setTimeout(() => {
      if (child.exitCode === null) process.kill(ready.pid, 'SIGKILL');
    }, 5000);
    await closed;
    clearTimeout(timer);
  });
  return {
    ...ready,
    async command(line) {
      child.stdin!.write(`${line}\n`);
      const next = await lines.next();
      if (next.done) throw new Error(`mapper exited while answering ${line}`);
      return JSON.parse(next.value) as { ok?: boolean; errno?: number; error?: string };
    },
  };
}

for (const action of ['unmap', 'protect'] as const) {
  (PYTHON ? test.serial : test.skip)(
    `pages that go away in the middle of a drain (${action}) are skipped, the rest dumped`,
    async (t) => {
      const N = 16384; // 64 MiB: far more than the drain's first buffer before the gate
      const m = await startMapper(t, N);
      const tmp = await tempDir(t);
      const gate = path.join(tmp, 'gate');
      await mkfifo(gate);
      const dir = path.join(tmp, 'images');
      const cli = startCli(['pre-dump', '-t', String(m.pid), '-D', dir, '--json'], {
        PREDUMP_TEST_DRAIN_GATE: gate,
      });
      t.teardown(() => {
        if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
      });
      const fh = await reachGate(gate, cli);
      try {
        // The middle half of the region goes away; one VMA becomes two around a hole.
        t.deepEqual(await m.command(`${action} ${N / 4} ${N / 2}`), { ok: true, errno: 0 });
        await fh.write(Buffer.from('x'));
      } finally {
        await fh.close();
      }
      const r = await cli.done;
      t.is(r.code, 0, r.stderr);
      const j = parseJson<{
        partial: boolean;
        pagesPresent: number;
        pagesWritten: number;
        pagesGone: number;
      }>(t, r);
      t.false(j.partial);
      t.is(j.pagesWritten + j.pagesGone, j.pagesPresent);
      t.true(j.pagesGone >= N / 2, `${j.pagesGone} pages gone`);
      // Said in the JSON (pagesGone); with --json, no summary on stderr.
      t.notRegex(r.stderr, /pre-dumped pid/);

      const { dir: d, presentPages } = await checkImagesDir(t, dir, m.pid);
      t.is(presentPages, j.pagesWritten);
      const { dumped, wrong } = await regionPages(dir, d.entries, m);
      t.is(wrong, 0, 'every dumped page of the region holds its bytes');
      const expected = [...Array(N).keys()].filter((i) => i < N / 4 || i >= (3 * N) / 4);
      t.is(dumped.length, expected.length, 'the pages around the hole, and only those');
      t.deepEqual(dumped, expected);
      await assertRunningUntraced(t, m.pid);
    },
  );
}

// More present runs in one mapping than one PAGEMAP_SCAN vector holds (4096): when the
// vector fills, this kernel may report a walk_end below the end of regions it already
// returned; the scan must neither repeat nor miss a run.
(PYTHON ? test.serial : test.skip)(
  'sparse memory: every other page present, thousands of one-page entries',
  async (t) => {
    const N = 16384;
    const m = await startMapper(t, N, 2);
    const dir = path.join(await tempDir(t), 'images');
    const r = await runCli(['pre-dump', '-t', String(m.pid), '-D', dir, '--json']);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<{ pagesGone: number; pagesWritten: number; pagemapEntries: number }>(t, r);
    t.is(j.pagesGone, 0);
    t.true(j.pagemapEntries >= N / 2, `${j.pagemapEntries} entries`);
    const { dir: d, presentPages } = await checkImagesDir(t, dir, m.pid);
    t.is(presentPages, j.pagesWritten);
    const { dumped, wrong } = await regionPages(dir, d.entries, m);
    t.is(wrong, 0);
    t.deepEqual(
      dumped,
      [...Array(N / 2).keys()].map((k) => 2 * k),
      'exactly the touched pages',
    );
    await assertRunningUntraced(t, m.pid);
  },
);
