/**
 * Iterative pre-dumps: dirty tracking with uffd-wp, parent images, untrack.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import {
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { PE_PARENT, PE_PRESENT, pagesFileName, readPreDumpDir } from '../ts/images/index.js';
import { decodeImage, encodeImage } from '../ts/images/format.js';
import { decodeInventory, encodeInventory } from '../ts/images/proto.js';
import { preDump } from '../ts/predump.js';
import {
  MiB,
  PAGE,
  assertCliError,
  assertRunningUntraced,
  parseJson,
  rebuildChain,
  runCli,
  startWorkload,
  tempDir,
} from './helpers.js';

async function fds(pid: number): Promise<string[]> {
  const names = await readdir(`/proc/${pid}/fd`);
  return Promise.all(names.map(async (n) => `${n} ${await readlink(`/proc/${pid}/fd/${n}`)}`));
}

/** Pages (addresses) covered by entries with `flag`. */
function pagesWith(
  entries: { vaddr: number; nrPages: number; flags: number }[],
  flag: number,
): Set<number> {
  const out = new Set<number>();
  for (const e of entries) {
    if (!(e.flags & flag)) continue;
    for (let i = 0; i < e.nrPages; i++) out.add(e.vaddr + i * PAGE);
  }
  return out;
}

test.serial(
  'known writes: the second pre-dump holds them, the rest is left to the parent',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 32 * MiB, threads: 0 });
    const tmp = await tempDir(t);
    const before = await fds(target.pid);
    const d1 = path.join(tmp, '1');
    const first = await preDump({ pid: target.pid, imagesDir: d1, trackMem: 'uffd-wp' });
    t.is(first.pagesSkippedParent, 0);
    t.true((await fds(target.pid)).some((f) => f.includes('anon_inode:[userfaultfd]')));

    const dirty = await target.w.dirty(62, 11); // about 1/16 of the data pages
    const dirtied = new Set<number>();
    for (const [start, count] of dirty.pages) {
      for (let i = 0; i < count; i++) dirtied.add(Number(start) + i * PAGE);
    }
    t.is(dirtied.size, dirty.dirtied);

    const d2 = path.join(tmp, '2');
    const r = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      d2,
      '--track-mem',
      'uffd-wp',
      '--prev-images-dir',
      d1,
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    const second = parseJson<{
      pagesWritten: number;
      pagesSkippedParent: number;
      trackNote: string | null;
    }>(t, r);
    t.is(second.trackNote, null);
    t.true(second.pagesSkippedParent > 0);
    t.true(second.pagesWritten < first.pagesWritten / 2, `${second.pagesWritten} pages written`);
    t.is(await readlink(path.join(d2, 'parent')), '../1');

    const img2 = await readPreDumpDir(d2);
    const present2 = pagesWith(img2.entries, PE_PRESENT);
    const parent2 = pagesWith(img2.entries, PE_PARENT);
    // Every dirtied page is in the new image; every other data page is left to the parent.
    for (const p of dirtied) t.true(present2.has(p), `dirtied page 0x${p.toString(16)} copied`);
    const data = target.w.data;
    let leftToParent = 0;
    for (let p = data.start; p < data.start + data.bytes; p += PAGE) {
      if (!dirtied.has(p)) {
        t.true(parent2.has(p), `clean page 0x${p.toString(16)} left to the parent`);
        leftToParent++;
      }
    }
    t.true(leftToParent > 0);
    // The new image's pages are the current contents; the parent's are the old ones, which
    // differ exactly on the dirtied pages: the chain rebuilds the current memory.
    const c2 = await target.w.checkImage(
      path.join(d2, pagesFileName(1)),
      img2.entries.filter((e) => e.flags & PE_PRESENT),
    );
    t.is(c2.mismatches, 0);
    const img1 = await readPreDumpDir(d1);
    const c1 = await target.w.checkImage(path.join(d1, pagesFileName(1)), img1.entries);
    t.is(c1.mismatches, dirtied.size, 'the parent is stale exactly on the dirtied pages');

    // Nothing written since: the third pre-dump copies (almost) nothing of the data.
    const d3 = path.join(tmp, '3');
    const third = await preDump({
      pid: target.pid,
      imagesDir: d3,
      trackMem: 'uffd-wp',
      prevImagesDir: d2,
    });
    const present3 = pagesWith((await readPreDumpDir(d3)).entries, PE_PRESENT);
    t.is([...present3].filter((p) => p >= data.start && p < data.start + data.bytes).length, 0);
    t.true(third.pagesWritten < 64, `${third.pagesWritten} pages written`);

    // untrack: the target's fds are as before tracking; a second untrack finds nothing.
    const u = await runCli(['untrack', '-t', String(target.pid), '--json']);
    t.is(u.code, 0, u.stderr);
    t.like(parseJson(t, u), { ok: true, untracked: true });
    t.deepEqual(await fds(target.pid), before);
    const u2 = await runCli(['untrack', '-t', String(target.pid), '--json']);
    t.like(parseJson(t, u2), { ok: true, untracked: false });
    await assertRunningUntraced(t, target.pid);
    t.like(await target.w.selfCheck(), { ok: true, mismatches: 0 });
  },
);

test.serial(
  'a parent not made with tracking, or by another arming run: every page copied, and said',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 0 });
    const tmp = await tempDir(t);
    t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
    const plain = await preDump({
      pid: target.pid,
      imagesDir: path.join(tmp, 'plain'),
      trackMem: 'none',
    });
    const a = await preDump({
      pid: target.pid,
      imagesDir: path.join(tmp, 'a'),
      trackMem: 'uffd-wp',
      prevImagesDir: path.join(tmp, 'plain'),
    });
    t.regex(a.trackNote ?? '', /every page is copied/);
    t.is(a.pagesSkippedParent, 0);
    t.true(a.pagesWritten >= plain.pagesWritten - 64);
    // b re-arms the tracking; a chain from a (armed before b) must not trust it.
    await preDump({ pid: target.pid, imagesDir: path.join(tmp, 'b'), trackMem: 'uffd-wp' });
    const c = await preDump({
      pid: target.pid,
      imagesDir: path.join(tmp, 'c'),
      trackMem: 'uffd-wp',
      prevImagesDir: path.join(tmp, 'a'),
    });
    t.regex(
      c.trackNote ?? '',
      /re-armed after the parent images were made, by a later pre-dump \(is the parent the newest of its chain\?\)/,
    );
    t.is(c.pagesSkippedParent, 0);
  },
);

test.serial('bad parents: another process, missing, incomplete, broken chain', async (t) => {
  const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 0 });
  const other = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 0 });
  const tmp = await tempDir(t);
  t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
  const args = (dir: string, prev: string): string[] => [
    'pre-dump',
    '-t',
    String(target.pid),
    '-D',
    path.join(tmp, dir),
    '--prev-images-dir',
    prev,
    '--json',
  ];
  const refused = async (dir: string, prev: string, message: RegExp): Promise<void> => {
    assertCliError(t, await runCli(args(dir, prev)), { exit: 1, code: 'EPARENT', message });
    t.false(existsSync(path.join(tmp, dir)), 'nothing made');
  };

  const theirs = path.join(tmp, 'theirs');
  await preDump({ pid: other.pid, imagesDir: theirs });
  await refused('x1', theirs, new RegExp(`made for process ${other.pid}, not ${target.pid}`));
  await refused('x2', path.join(tmp, 'nowhere'), /do not exist/);
  // A file is not a directory, and neither it nor a missing one is "corrupt".
  const file = path.join(tmp, 'a-file');
  await writeFile(file, 'not images\n');
  await refused('x2f', file, new RegExp(`parent images ${file} are not a directory`));
  for (const prev of [file, path.join(tmp, 'nowhere')]) {
    const r = await runCli(args('x2c', prev));
    t.notRegex(r.stderr, /corrupt/, prev);
    // Without --json: the same message on stderr, exit 1.
    const plain = await runCli(args('x2c', prev).slice(0, -1));
    t.is(plain.code, 1);
    t.regex(plain.stderr, /^predump: error: parent images .* (do not exist|are not a directory)/m);
  }

  const incomplete = path.join(tmp, 'incomplete');
  await preDump({ pid: target.pid, imagesDir: incomplete });
  await rm(path.join(incomplete, 'inventory.img'));
  await refused('x3', incomplete, /incomplete/);

  // A chain whose middle link is gone: its PE_PARENT pages are held nowhere.
  const d1 = path.join(tmp, 'd1');
  const d2 = path.join(tmp, 'd2');
  await preDump({ pid: target.pid, imagesDir: d1, trackMem: 'uffd-wp' });
  const two = await preDump({
    pid: target.pid,
    imagesDir: d2,
    trackMem: 'uffd-wp',
    prevImagesDir: d1,
  });
  t.true(two.pagesSkippedParent > 0);
  await rm(path.join(d2, 'parent'));
  await refused('x4', d2, /no 'parent' link/);
  await symlink('../gone', path.join(d2, 'parent'));
  await refused(
    'x5',
    d2,
    new RegExp(`chain of parent images .* is broken: the images ${tmp}/gone .* do not exist`),
  );
  await assertRunningUntraced(t, target.pid);
  t.like(await target.w.selfCheck(), { ok: true });
});

test.serial(
  'bad parents: a missing middle link, a link holding the wrong pages, a reused pid, a reboot',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 8 * MiB, threads: 0 });
    const tmp = await tempDir(t);
    t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
    const refused = async (pid: number, prev: string, message: RegExp): Promise<void> => {
      const dir = path.join(tmp, `x${Math.random().toString(36).slice(2)}`);
      const args = ['pre-dump', '-t', String(pid), '-D', dir, '--prev-images-dir', prev, '--json'];
      assertCliError(t, await runCli(args), { exit: 1, code: 'EPARENT', message });
      t.false(existsSync(dir), 'nothing made');
    };
    // 1 <- 2 <- 3: 2 gone. 3 leaves pages to 2, which leaves pages to 1.
    const dirs = ['1', '2', '3'].map((n) => path.join(tmp, n));
    for (const [i, dir] of dirs.entries()) {
      const r = await preDump({ pid: target.pid, imagesDir: dir, prevImagesDir: dirs[i - 1] });
      if (i > 0) t.true(r.pagesSkippedParent > 0, `${dir} leaves pages to its parent`);
    }
    await rm(dirs[1]!, { recursive: true });
    await refused(
      target.pid,
      dirs[2]!,
      new RegExp(
        `chain of parent images ${dirs[2]} is broken: the images ${dirs[1]} .* do not exist`,
      ),
    );
    // A link that exists but is another pre-dump: it lacks pages the one below
    // leaves to it (CRIU's "Missing … in parent pagemap", caught before).
    const empty = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0 });
    await preDump({ pid: empty.pid, imagesDir: dirs[1]!, trackMem: 'none' });
    await rename(
      path.join(dirs[1]!, `pagemap-${empty.pid}.img`),
      path.join(dirs[1]!, `pagemap-${target.pid}.img`),
    );
    await refused(
      target.pid,
      dirs[2]!,
      new RegExp(`leaves page 0x[0-9a-f]+ to the images ${dirs[1]} .* which do not hold it`),
    );

    // A reused pid: images of pid P made before the process now called P started.
    const old = path.join(tmp, 'old');
    await preDump({ pid: target.pid, imagesDir: old, trackMem: 'none' });
    const later = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0 });
    // old's pagemap under later's pid: as if `later` had taken over target's pid.
    await rename(
      path.join(old, `pagemap-${target.pid}.img`),
      path.join(old, `pagemap-${later.pid}.img`),
    );
    await refused(
      later.pid,
      old,
      new RegExp(`made for an earlier process with pid ${later.pid} .* the pid was reused`),
    );

    // Before a reboot: another boot id in predump's record, or images older than the boot.
    const before = path.join(tmp, 'before');
    await preDump({ pid: target.pid, imagesDir: before });
    const recordPath = path.join(before, 'predump-track.json');
    const record = JSON.parse(await readFile(recordPath, 'utf8')) as { bootId: string };
    t.regex(record.bootId, /^[0-9a-f-]{36}$/);
    await writeFile(
      recordPath,
      JSON.stringify({ ...record, bootId: '00000000-0000-4000-8000-000000000000' }),
    );
    await refused(target.pid, before, /were made before the last reboot \(boot 00000000-/);
    await writeFile(recordPath, JSON.stringify(record));
    // dump_uptime (microseconds) a little ahead of /proc/uptime (hundredths of a second), as
    // for a parent made within the same hundredth: accepted (up to a second ahead); an hour
    // ahead of the boot: refused.
    const invPath = path.join(before, 'inventory.img');
    const invBytes = await readFile(invPath);
    const inv = decodeInventory(decodeImage(invBytes, invPath, 'INVENTORY').records[0]!);
    const uptimeUs = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]) * 1e6;
    const madeAt = (us: number) =>
      writeFile(
        invPath,
        encodeImage('INVENTORY', [encodeInventory({ ...inv, dumpUptime: Math.round(us) })]),
      );
    await madeAt(uptimeUs + 800_000);
    const close = path.join(tmp, 'after-close');
    const ok = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      close,
      '--prev-images-dir',
      before,
      '--json',
    ]);
    t.is(ok.code, 0, ok.stderr);
    await madeAt(uptimeUs + 3600e6);
    await refused(target.pid, before, /were made before the last reboot \([\d.]+ s after a boot/);
    await writeFile(invPath, invBytes);
    const longAgo = new Date(Date.now() - 10 * 365 * 86400e3);
    await utimes(path.join(before, 'inventory.img'), longAgo, longAgo);
    await refused(target.pid, before, /were made before the last reboot \(written /);
    await assertRunningUntraced(t, target.pid);
  },
);

test.serial(
  "--prev-images-dir as CRIU's: relative to the images directory; a missing one called missing",
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 4 * MiB, threads: 0 });
    const tmp = await tempDir(t);
    t.teardown(() => runCli(['untrack', '-t', String(target.pid)]).then(() => undefined));
    const one = path.join(tmp, 'one');
    await preDump({ pid: target.pid, imagesDir: one });
    // The CLI runs in the checkout: '../one' is found only next to -D.
    const r = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      path.join(tmp, 'two'),
      '--prev-images-dir',
      '../one',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    const two = parseJson<{ parent: string; trackNote: string | null; pagesSkippedParent: number }>(
      t,
      r,
    );
    t.is(two.parent, one);
    t.is(two.trackNote, null);
    t.true(two.pagesSkippedParent > 0);
    t.is(await readlink(path.join(tmp, 'two', 'parent')), '../one');
    // An absolute path works as well.
    const three = await preDump({
      pid: target.pid,
      imagesDir: path.join(tmp, 'three'),
      prevImagesDir: path.join(tmp, 'two'),
    });
    t.is(three.trackNote, null);
    const missing = await runCli([
      'pre-dump',
      '-t',
      String(target.pid),
      '-D',
      path.join(tmp, 'four'),
      '--prev-images-dir',
      '../nothing',
      '--json',
    ]);
    assertCliError(t, missing, {
      exit: 1,
      code: 'EPARENT',
      message: new RegExp(
        `parent images \\.\\./nothing do not exist \\(${tmp}/nothing\\): a relative --prev-images-dir is relative to the images directory`,
      ),
    });
    t.false(existsSync(path.join(tmp, 'four')));
  },
);

test.serial(
  'pre-dumps while writing, then dump --leave-stopped: the chain equals the memory',
  async (t) => {
    const target = await startWorkload(t, { sizeBytes: 16 * MiB, threads: 1 });
    const tmp = await tempDir(t);
    const before = await fds(target.pid);
    const dirs: string[] = [];
    for (let i = 0; i < 4; i++) {
      const dir = path.join(tmp, `pre-${i}`);
      await preDump({
        pid: target.pid,
        imagesDir: dir,
        trackMem: 'uffd-wp',
        prevImagesDir: dirs.at(-1),
      });
      dirs.push(dir);
      await target.w.dirty(40 + i * 10, 100 + i);
    }
    const final = path.join(tmp, 'final');
    const r = await runCli([
      'dump',
      '-t',
      String(target.pid),
      '-D',
      final,
      '--prev-images-dir',
      dirs.at(-1)!,
      '--leave-stopped',
      '--json',
    ]);
    t.is(r.code, 0, r.stderr);
    const j = parseJson<{ leftStopped: boolean; pagesSkippedParent: number }>(t, r);
    t.true(j.leftStopped);
    t.true(j.pagesSkippedParent > 0);
    t.teardown(() => {
      try {
        process.kill(target.pid, 'SIGCONT');
      } catch {
        // gone
      }
    });
    // Left job-stopped, untraced, without the tracking fds.
    let state = '';
    for (let i = 0; i < 10_000 && state !== 'T'; i++) {
      state = (await readFile(`/proc/${target.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')[0]!;
    }
    t.is(state, 'T');
    t.is(
      (await readFile(`/proc/${target.pid}/status`, 'utf8')).match(/TracerPid:\s*(\d+)/)?.[1],
      '0',
    );
    t.deepEqual(await fds(target.pid), before, 'the uffd and its marker are gone');

    // Independent check: every data page rebuilt from the chain equals /proc/PID/mem.
    const { start, bytes } = target.w.data;
    const chain = new Map(
      [...(await rebuildChain(final))].filter(([a]) => a >= start && a < start + bytes),
    );
    t.is(chain.size, bytes / PAGE, 'every data page is in the chain');
    const mem = await open(`/proc/${target.pid}/mem`, 'r');
    let mismatches = 0;
    try {
      const buf = Buffer.alloc(PAGE);
      for (const [addr, page] of chain) {
        await mem.read(buf, 0, PAGE, addr);
        if (!buf.equals(page)) mismatches++;
      }
    } finally {
      await mem.close();
    }
    t.is(mismatches, 0);

    // predump verify says the same (the target stays stopped through it)...
    const v = await runCli(['verify', '-t', String(target.pid), '-D', final, '--json']);
    t.is(v.code, 0, v.stderr);
    const vj = parseJson<{
      ok: boolean;
      mismatches: number;
      pagesCompared: number;
      missing: number;
      chain: string[];
    }>(t, v);
    t.like(vj, { ok: true, mismatches: 0, missing: 0 });
    t.is(vj.chain.length, 5);
    t.true(vj.pagesCompared >= bytes / PAGE);
    // ...and sees a change made after the dump.
    process.kill(target.pid, 'SIGCONT');
    const changed = await target.w.dirty(10, 999);
    const v2 = await runCli(['verify', '-t', String(target.pid), '-D', final, '--json']);
    t.is(v2.code, 1);
    t.true(parseJson<{ mismatches: number }>(t, v2).mismatches >= changed.dirtied);
    t.like(await target.w.selfCheck(), { ok: true, mismatches: 0 });
  },
);
