/**
 * Anonymous shared memory in a tree's chain (issue 12): a pre-dump or dump on parent images
 * copies a page of a shared object only if it differs from the chain's copy (or the chain
 * lacks it); the rest are PE_PARENT entries of pagemap-shmem-SHMID.img, by offset. An object
 * new since the parent, or one the parent recorded as another object under the same shmid, is
 * copied whole. Real trees (the workload's), verified against the stopped tree.
 */
import test, { type ExecutionContext } from 'ava';
import { cp, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  decodeImage,
  decodePagemapEntry,
  decodePagemapHead,
  PE_PARENT,
  PE_PRESENT,
} from '../ts/images/index.js';
import type { PreDumpResult, SharedMemoryResult } from '../ts/predump.js';
import type { TrackRecord } from '../ts/parent.js';
import { CRIT, crit, PAGE, parseJson, runCli, signalAll, startTree, tempDir } from './helpers.js';

type T = ExecutionContext<unknown>;

interface Entry {
  vaddr: number;
  nrPages: number;
  flags: number;
}

async function shmemPagemap(dir: string, shmid: number): Promise<Entry[]> {
  const file = path.join(dir, `pagemap-shmem-${shmid}.img`);
  const recs = decodeImage(await readFile(file), file, 'PAGEMAP').records;
  decodePagemapHead(recs[0]!);
  return recs.slice(1).map((r) => {
    const e = decodePagemapEntry(r);
    return { vaddr: e.vaddr, nrPages: e.nrPages ?? e.compatNrPages, flags: e.flags ?? 0 };
  });
}

/** A tree pre-dump (or dump) without dirty tracking: shared memory is compared all the same. */
async function run(t: T, cmd: string, root: number, dir: string, parent?: string) {
  const r = await runCli([
    cmd,
    '-t',
    String(root),
    '-D',
    dir,
    '--track-mem',
    'none',
    '--json',
    ...(parent ? ['--prev-images-dir', parent] : []),
    ...(cmd === 'dump' ? ['--leave-stopped'] : []),
  ]);
  t.is(r.code, 0, r.stderr);
  return parseJson<PreDumpResult>(t, r);
}

function object(t: T, j: PreDumpResult, shmid: number): SharedMemoryResult {
  const o = j.sharedMemory?.find((s) => s.shmid === shmid);
  t.truthy(o, `shared object ${shmid} in ${j.imagesDir}`);
  return o!;
}

async function verifyTree(t: T, root: number, dir: string): Promise<void> {
  const v = await runCli(['verify', '-t', String(root), '-D', dir, '--json']);
  t.is(v.code, 0, v.stderr);
  const j = parseJson<{
    ok: boolean;
    mismatches: number;
    missing: number;
    sharedMemory: { shmid: number; pagesCompared: number; mismatches: number }[];
  }>(t, v);
  t.like(j, { ok: true, mismatches: 0, missing: 0 });
  t.true(j.sharedMemory.length >= 2, 'the shared objects were compared');
}

test('a pre-dump on its parent writes only the shared pages that changed, PE_PARENT for the rest; the chain and a dump on it verify', async (t) => {
  const { w, pids } = await startTree(t);
  const base = await tempDir(t);
  const shared = w.shared!.inode;
  const devzero = w.devzero!.inode;
  t.teardown(() => signalAll(pids, 'SIGCONT'));

  const j1 = await run(t, 'pre-dump', w.pid, path.join(base, '1'));
  t.like(object(t, j1, shared), { pagesWritten: 256, pagesSkippedParent: 0, inParent: null });
  // Each object's identity is recorded for the next pre-dump's check.
  const record = JSON.parse(
    await readFile(path.join(base, '1', 'predump-track.json'), 'utf8'),
  ) as TrackRecord;
  t.deepEqual(
    record.shmem
      ?.map((o) => o.shmid)
      .filter((id) => id === shared || id === devzero)
      .sort(),
    [shared, devzero].sort(),
  );

  // 5 pages of the 256 rewritten (pages 10-14), then nothing changes: verify is exact.
  await w.command('shared-dirty-range shared 10 5');
  signalAll(pids, 'SIGSTOP');
  const j2 = await run(t, 'pre-dump', w.pid, path.join(base, '2'), '../1');
  t.like(object(t, j2, shared), {
    pagesWritten: 5,
    pagesSkippedParent: 251,
    pagesCompared: 256,
    inParent: 'yes',
  });
  t.like(object(t, j2, devzero), {
    pagesWritten: 0,
    pagesSkippedParent: 128,
    inParent: 'yes',
  });
  const objects = j2.sharedMemory!;
  t.is(
    j2.sharedPagesWritten,
    objects.reduce((n, o) => n + o.pagesWritten, 0),
  );
  t.is(
    j2.sharedPagesSkippedParent,
    objects.reduce((n, o) => n + o.pagesSkippedParent, 0),
  );
  t.true(j2.sharedPagesWritten <= 5 + 2, `${j2.sharedPagesWritten} shared pages written`);
  t.notRegex(j2.trackNote ?? '', /shared memory is not tracked|copied whole/);
  // The object's pagemap, by offset: in the parent, present, in the parent.
  t.deepEqual(await shmemPagemap(path.join(base, '2'), shared), [
    { vaddr: 0, nrPages: 10, flags: PE_PARENT },
    { vaddr: 10 * PAGE, nrPages: 5, flags: PE_PRESENT },
    { vaddr: 15 * PAGE, nrPages: 241, flags: PE_PARENT },
  ]);
  const pagesId = object(t, j2, shared).pagesId;
  t.is((await stat(path.join(base, '2', `pages-${pagesId}.img`))).size, 5 * PAGE);
  if (CRIT) {
    const pm = await crit(path.join(base, '2', `pagemap-shmem-${shared}.img`));
    t.is(pm.magic, 'PAGEMAP');
  }
  await verifyTree(t, w.pid, path.join(base, '2'));

  // A third on the second, nothing changed: every shared page is left to the chain (pages
  // 0-9 two levels down), and the three levels verify.
  const human = await runCli([
    'pre-dump',
    '-t',
    String(w.pid),
    '-D',
    path.join(base, '3'),
    '--prev-images-dir',
    '../2',
    '--track-mem',
    'none',
  ]);
  t.is(human.code, 0, human.stderr);
  t.regex(
    human.stderr,
    new RegExp(
      `\\n  shmem    ${shared}: 1\\.00 MiB, 0 pages written once, .*; 256 left to the parent \\(equal to the chain's copy of 256 compared\\)`,
    ),
  );
  t.regex(human.stderr, /; shared memory 0 written, \d+ left to the parent/);
  await verifyTree(t, w.pid, path.join(base, '3'));

  // A page the chain holds two levels down changes: the dump (frozen) copies it alone.
  signalAll(pids, 'SIGCONT');
  await w.command('shared-dirty-range shared 3 1');
  signalAll(pids, 'SIGSTOP');
  const d = await run(t, 'dump', w.pid, path.join(base, '4'), '../3');
  t.like(object(t, d, shared), { pagesWritten: 1, pagesSkippedParent: 255, inParent: 'yes' });
  t.deepEqual(
    (await shmemPagemap(path.join(base, '4'), shared)).filter((e) => e.flags & PE_PRESENT),
    [{ vaddr: 3 * PAGE, nrPages: 1, flags: PE_PRESENT }],
  );
  await verifyTree(t, w.pid, path.join(base, '4'));
  const stats = await runCli(['show', path.join(base, '4'), '--json']);
  t.is(stats.code, 0, stats.stderr);
  t.like(parseJson<{ stats: { shpagesSkippedParent: number } }>(t, stats).stats, {
    shpagesSkippedParent: d.sharedPagesSkippedParent,
  });
});

test('a shared object new since the parent is copied whole; then only its changed page', async (t) => {
  const { w, pids } = await startTree(t);
  const base = await tempDir(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  await run(t, 'pre-dump', w.pid, path.join(base, '1'));
  const made = await w.command<{ addr: string; pages: number; inode: number }>(
    'proc 1 map-shared 64 5',
  );
  t.true(made.inode > 0);
  signalAll(pids, 'SIGSTOP');
  const j2 = await run(t, 'pre-dump', w.pid, path.join(base, '2'), '../1');
  t.like(object(t, j2, made.inode), {
    pagesWritten: 64,
    pagesSkippedParent: 0,
    pagesCompared: 0,
    inParent: 'new',
  });
  t.like(object(t, j2, w.shared!.inode), { pagesWritten: 0, inParent: 'yes' });
  t.true(
    (await shmemPagemap(path.join(base, '2'), made.inode)).every((e) => e.flags === PE_PRESENT),
  );
  await verifyTree(t, w.pid, path.join(base, '2'));
  // One page of it rewritten: the next pre-dump copies that page only.
  signalAll(pids, 'SIGCONT');
  await w.command(`proc 1 write ${made.addr} 1 9`);
  signalAll(pids, 'SIGSTOP');
  const j3 = await run(t, 'pre-dump', w.pid, path.join(base, '3'), '../2');
  t.like(object(t, j3, made.inode), {
    pagesWritten: 1,
    pagesSkippedParent: 63,
    inParent: 'yes',
  });
  await verifyTree(t, w.pid, path.join(base, '3'));
});

// A shmid is an inode number, which the kernel reuses once an object is freed: parent images
// may hold another object under the same number. Such a reuse cannot be forced here, so the
// parent's record is made to say it: its identity for the shared region is the one of another
// tree's object (a real, different object), and the devzero region's is left out (a parent
// made by CRIU, or an older predump, records none). Neither is compared with the chain.
test('a parent with a same-numbered but different object (or none recorded) is not trusted: copied whole', async (t) => {
  const { w, pids } = await startTree(t);
  const other = await startTree(t);
  const base = await tempDir(t);
  t.teardown(() => signalAll(pids, 'SIGCONT'));
  const shared = w.shared!.inode;
  const devzero = w.devzero!.inode;
  await run(t, 'pre-dump', w.pid, path.join(base, '1'));
  await run(t, 'pre-dump', other.w.pid, path.join(base, 'other'));
  const recordOf = async (dir: string): Promise<TrackRecord> =>
    JSON.parse(await readFile(path.join(dir, 'predump-track.json'), 'utf8')) as TrackRecord;
  const otherIdentity = (await recordOf(path.join(base, 'other'))).shmem!.find(
    (o) => o.shmid === other.w.shared!.inode,
  )!.identity;
  const mine = (await recordOf(path.join(base, '1'))).shmem!.find((o) => o.shmid === shared)!;
  t.not(otherIdentity, mine.identity, 'two objects, two identities');

  await cp(path.join(base, '1'), path.join(base, '1x'), { recursive: true });
  const record = await recordOf(path.join(base, '1x'));
  record.shmem = record
    .shmem!.filter((o) => o.shmid !== devzero)
    .map((o) => (o.shmid === shared ? { shmid: shared, identity: otherIdentity } : o));
  await writeFile(path.join(base, '1x', 'predump-track.json'), JSON.stringify(record));

  signalAll(pids, 'SIGSTOP');
  const j = await run(t, 'pre-dump', w.pid, path.join(base, '2x'), '../1x');
  t.like(object(t, j, shared), {
    pagesWritten: 256,
    pagesSkippedParent: 0,
    pagesCompared: 0,
    inParent: 'other-object',
  });
  t.like(object(t, j, devzero), { pagesWritten: 128, inParent: 'unrecorded' });
  t.regex(
    j.trackNote ?? '',
    new RegExp(
      `shared memory ${shared}: the parent images recorded another object under this number`,
    ),
  );
  t.regex(
    j.trackNote ?? '',
    new RegExp(`shared memory ${devzero}: the parent images do not record`),
  );
  t.true((await shmemPagemap(path.join(base, '2x'), shared)).every((e) => e.flags === PE_PRESENT));
  await verifyTree(t, w.pid, path.join(base, '2x'));
  // The true record: the same pages are left to the parent.
  const j2 = await run(t, 'pre-dump', w.pid, path.join(base, '2'), '../1');
  t.like(object(t, j2, shared), { pagesWritten: 0, pagesSkippedParent: 256, inParent: 'yes' });
});
