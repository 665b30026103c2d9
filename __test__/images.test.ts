import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import {
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createRequire } from 'node:module';

import {
  CRIU_PROTO,
  decodeImage,
  decodeInventory,
  decodePagemapEntry,
  decodePagemapHead,
  decodeStats,
  encodeImage,
  encodeInventory,
  encodePagemapEntry,
  encodePagemapHead,
  encodeStats,
  ImageError,
  imageFile,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  PRE_DUMP_MODE,
  pagemapFileName,
  pagesFileName,
  readPreDumpDir,
  shmemPagemapFileName,
  writePreDumpImages,
  type DumpStats,
  type PagemapEntry,
  type PreDumpImages,
} from '../ts/images/index.js';

const execFileP = promisify(execFile);
// CRIU 4.2's reference images live in the project's shared/ folder, beside the repository
// (CI lays a copy there); /work/shared is where a developer's machine has it.
const REF =
  [
    path.resolve(fileURLToPath(import.meta.url), '../../../shared/criu-reference'),
    '/work/shared/criu-reference',
  ].find((p) => existsSync(p)) ?? '/work/shared/criu-reference';
const MODES = ['read', 'splice'] as const;
const REF_PID = 30583;
const CRIT = ['/usr/bin/crit', '/usr/local/bin/crit'].find((p) => existsSync(p));
// CI installs Debian's criu package (.ci/run); without crit these tests say so by failing.
const withCrit = test;

// ---- helpers for crit's JSON ----------------------------------------------------------------

type Json = Record<string, unknown>;

interface CritImage {
  magic: string;
  entries: Json[];
}

const FLAG_BITS: Record<string, number> = { PE_PARENT, PE_LAZY, PE_PRESENT };

/** crit --pretty writes "0x401000" and "PE_LAZY | PE_PRESENT"; plain crit writes numbers. */
function critNum(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && v.startsWith('0x')) return Number.parseInt(v, 16);
  throw new TypeError(`not a number: ${JSON.stringify(v)}`);
}

function critFlags(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v !== 'string') throw new TypeError(`not flags: ${JSON.stringify(v)}`);
  return v.split('|').reduce((bits, name) => bits | FLAG_BITS[name.trim()]!, 0);
}

async function readJson(path: string): Promise<CritImage> {
  return JSON.parse(await readFile(path, 'utf8')) as CritImage;
}

async function crit(file: string, pretty = false): Promise<CritImage> {
  const args = ['decode', '-i', file, ...(pretty ? ['--pretty'] : [])];
  const { stdout } = await execFileP(CRIT ?? 'crit', args);
  return JSON.parse(stdout) as CritImage;
}

function refFile(mode: string, name: string): string {
  return join(REF, `predump-${mode}`, name);
}

async function tempDir(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'predump-images-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const STATS_SNAKE: Record<keyof DumpStats, string> = {
  freezingTime: 'freezing_time',
  frozenTime: 'frozen_time',
  memdumpTime: 'memdump_time',
  memwriteTime: 'memwrite_time',
  pagesScanned: 'pages_scanned',
  pagesSkippedParent: 'pages_skipped_parent',
  pagesWritten: 'pages_written',
  pagesLazy: 'pages_lazy',
  pagePipes: 'page_pipes',
  pagePipeBufs: 'page_pipe_bufs',
  irmapResolve: 'irmap_resolve',
  shpagesScanned: 'shpages_scanned',
  shpagesSkippedParent: 'shpages_skipped_parent',
  shpagesWritten: 'shpages_written',
};

/** The stats of a crit dump entry in our camelCase shape (only the fields crit shows). */
function critStats(dump: Json): DumpStats {
  const out: Json = {};
  for (const [camel, snake] of Object.entries(STATS_SNAKE)) {
    if (dump[snake] !== undefined) out[camel] = critNum(dump[snake]);
  }
  return out as unknown as DumpStats;
}

// ---- the CRIU 4.2 reference images -----------------------------------------------------------

for (const mode of MODES) {
  test(`decodes CRIU 4.2 ${mode} images like crit 4.2`, async (t) => {
    const inv = decodeImage(await readFile(refFile(mode, 'inventory.img')), 'inventory.img');
    t.is(inv.kind, 'INVENTORY');
    t.is(inv.records.length, 1);
    const critInv = (await readJson(join(REF, 'decoded', `${mode}-inventory.img.crit42.json`)))
      .entries[0]!;
    t.deepEqual(decodeInventory(inv.records[0]!), {
      imgVersion: critNum(critInv['img_version']),
      dumpUptime: critNum(critInv['dump_uptime']),
      preDumpMode: critNum(critInv['pre_dump_mode']),
      plugins: [], // crit: "plugins_entry": {}
    });
    t.is(critInv['pre_dump_mode'], PRE_DUMP_MODE[mode]);

    const pm = decodeImage(await readFile(refFile(mode, `pagemap-${REF_PID}.img`)), 'pagemap');
    t.is(pm.kind, 'PAGEMAP');
    const critPm = await readJson(
      join(REF, 'decoded', `${mode}-pagemap-${REF_PID}.img.crit42.json`),
    );
    t.is(pm.records.length, critPm.entries.length);
    t.deepEqual(decodePagemapHead(pm.records[0]!), {
      pagesId: critNum(critPm.entries[0]!['pages_id']),
    });
    pm.records.slice(1).forEach((rec, i) => {
      const c = critPm.entries[i + 1]!;
      t.deepEqual(decodePagemapEntry(rec), {
        vaddr: critNum(c['vaddr']),
        compatNrPages: critNum(c['compat_nr_pages']),
        flags: critFlags(c['flags']),
        nrPages: critNum(c['nr_pages']),
      });
    });

    const st = decodeImage(await readFile(refFile(mode, 'stats-dump')), 'stats-dump');
    t.is(st.kind, 'STATS');
    const critSt = await readJson(join(REF, 'decoded', `${mode}-stats-dump.crit42.json`));
    t.deepEqual(decodeStats(st.records[0]!), {
      dump: critStats(critSt.entries[0]!['dump'] as Json),
    });
  });

  test(`readPreDumpDir reads the CRIU 4.2 ${mode} directory`, async (t) => {
    const dir = await readPreDumpDir(join(REF, `predump-${mode}`));
    const critPm = await readJson(
      join(REF, 'decoded', `${mode}-pagemap-${REF_PID}.img.crit42.json`),
    );
    const critSt = await readJson(join(REF, 'decoded', `${mode}-stats-dump.crit42.json`));
    const critInv = (await readJson(join(REF, 'decoded', `${mode}-inventory.img.crit42.json`)))
      .entries[0]!;
    t.true(dir.complete);
    t.is(dir.pid, REF_PID);
    t.is(dir.pagesId, 1);
    t.deepEqual(
      dir.entries,
      critPm.entries.slice(1).map((c) => ({
        vaddr: critNum(c['vaddr']),
        nrPages: critNum(c['nr_pages']), // field 5: field 2 is 0 in CRIU 4.2's images
        flags: critFlags(c['flags']),
      })),
    );
    t.is(dir.pagesFileBytes, 77 * 4096);
    t.deepEqual(dir.stats, critStats(critSt.entries[0]!['dump'] as Json));
    t.deepEqual(dir.inventory, {
      imgVersion: 0,
      dumpUptime: critNum(critInv['dump_uptime']),
      preDumpMode: PRE_DUMP_MODE[mode],
    });
    t.is(dir.parent, undefined);
  });

  test(`re-encodes the CRIU 4.2 ${mode} records byte for byte`, async (t) => {
    for (const name of ['inventory.img', `pagemap-${REF_PID}.img`, 'stats-dump']) {
      const bytes = await readFile(refFile(mode, name));
      const img = decodeImage(bytes, name);
      let records: Uint8Array[];
      if (img.kind === 'INVENTORY')
        records = img.records.map((r) => encodeInventory(decodeInventory(r)));
      else if (img.kind === 'STATS') records = img.records.map((r) => encodeStats(decodeStats(r)));
      else {
        records = [
          encodePagemapHead(decodePagemapHead(img.records[0]!)),
          ...img.records.slice(1).map((r) => encodePagemapEntry(decodePagemapEntry(r))),
        ];
      }
      t.true(encodeImage(img.kind, records).equals(bytes), name);
    }
  });
}

test('image file names are recognised by one function, and the names it makes round-trip', (t) => {
  t.deepEqual(imageFile(pagemapFileName(30583)), { kind: 'pagemap', pid: 30583 });
  t.deepEqual(imageFile(pagesFileName(7)), { kind: 'pages', pagesId: 7 });
  t.deepEqual(imageFile(shmemPagemapFileName(1234)), { kind: 'shmem-pagemap', shmid: 1234 });
  t.deepEqual(imageFile('inventory.img'), { kind: 'inventory' });
  t.deepEqual(imageFile('stats-dump'), { kind: 'stats' });
  t.deepEqual(imageFile('parent'), { kind: 'parent' });
  t.deepEqual(imageFile('predump-track.json'), { kind: 'track' });
  t.deepEqual(imageFile('.pages-1.img.123-abcd.tmp'), { kind: 'temp' });
  for (const other of [
    'pagemap-.img',
    'pagemap-shmem-.img',
    'pagemap-x1.img',
    'pages-1.img.bak',
    'pagemap-1.img~',
    'core-1.img',
    'parent2',
    'inventory.img.tmp',
  ]) {
    t.is(imageFile(other), undefined, other);
  }
});

test('crit 3.17 sees 0 pages in CRIU 4.2 pagemaps (why we also write field 2)', async (t) => {
  const old = await readJson(join(REF, 'decoded', `read-pagemap-${REF_PID}.img.crit317.json`));
  t.true(old.entries.slice(1).every((e) => e['nr_pages'] === 0));
});

// ---- our writer, checked by the independent reader crit -------------------------------------

const ENTRIES: PagemapEntry[] = [
  { vaddr: 0x401000, nrPages: 1, flags: PE_PRESENT },
  { vaddr: 0x4a2000, nrPages: 5, flags: PE_PRESENT },
  { vaddr: 0x4a7000, nrPages: 3, flags: PE_PARENT }, // adjacent to the previous one
  { vaddr: 0x35076000, nrPages: 2, flags: PE_LAZY | PE_PRESENT },
  { vaddr: 0x7ff5139b8000, nrPages: 64, flags: PE_LAZY | PE_PRESENT },
  { vaddr: 0x7ffec8ea8000, nrPages: 2, flags: PE_PRESENT },
];
const PRESENT = 1 + 5 + 2 + 64 + 2;

function sampleImages(entries = ENTRIES): PreDumpImages {
  return {
    pid: 4242,
    pagesId: 3,
    entries,
    stats: {
      freezingTime: 164,
      frozenTime: 1396,
      memdumpTime: 352,
      memwriteTime: 246,
      pagesScanned: 84,
      pagesSkippedParent: 3,
      pagesWritten: PRESENT,
      pagesLazy: 0,
      pagePipes: 1,
      pagePipeBufs: 4,
    },
    inventory: { dumpUptime: 1354980000n, preDumpMode: PRE_DUMP_MODE.read },
  };
}

withCrit('writePreDumpImages: crit decodes every field as written', async (t) => {
  const dir = await tempDir(t);
  const images = sampleImages();
  await writeFile(join(dir, pagesFileName(images.pagesId)), Buffer.alloc(PRESENT * 4096));
  await symlink('../previous', join(dir, 'parent'));
  await writePreDumpImages(dir, images);

  const names = (await readdir(dir)).sort();
  t.deepEqual(names, ['inventory.img', 'pagemap-4242.img', 'pages-3.img', 'parent', 'stats-dump']);
  for (const name of ['inventory.img', pagemapFileName(4242), 'stats-dump']) {
    t.is((await stat(join(dir, name))).mode & 0o777, 0o600, name);
  }

  const inv = await crit(join(dir, 'inventory.img'));
  t.is(inv.magic, 'INVENTORY');
  t.deepEqual(inv.entries, [{ img_version: 0, dump_uptime: 1354980000, pre_dump_mode: 2 }]);

  const pm = await crit(join(dir, pagemapFileName(4242)));
  t.is(pm.magic, 'PAGEMAP');
  t.deepEqual(pm.entries[0], { pages_id: 3 });
  t.deepEqual(
    pm.entries.slice(1).map((e) => ({
      vaddr: critNum(e['vaddr']),
      nrPages: critNum(e['nr_pages']), // crit 3.17 names field 2 "nr_pages"
      flags: critFlags(e['flags']),
    })),
    images.entries,
  );
  const pretty = await crit(join(dir, pagemapFileName(4242)), true);
  t.is(pretty.entries[5]!['vaddr'], '0x7ff5139b8000');
  t.is(pretty.entries[5]!['flags'], 'PE_LAZY | PE_PRESENT');

  const st = await crit(join(dir, 'stats-dump'));
  t.is(st.magic, 'STATS');
  t.deepEqual(critStats(st.entries[0]!['dump'] as Json), images.stats);

  const back = await readPreDumpDir(dir);
  t.deepEqual(back, {
    complete: true,
    inventory: { imgVersion: 0, dumpUptime: 1354980000, preDumpMode: 2 },
    pid: 4242,
    pagesId: 3,
    entries: images.entries,
    stats: images.stats,
    pagesFileBytes: PRESENT * 4096,
    parent: '../previous',
  });
});

test('writePreDumpImages reproduces CRIU 4.2 inventory and stats bytes; pagemap differs only in field 2', async (t) => {
  const ref = await readPreDumpDir(join(REF, 'predump-read'));
  const dir = await tempDir(t);
  await writePreDumpImages(dir, {
    pid: ref.pid!,
    pagesId: ref.pagesId!,
    entries: ref.entries,
    stats: ref.stats!,
    inventory: { dumpUptime: ref.inventory!.dumpUptime!, preDumpMode: ref.inventory!.preDumpMode! },
  });
  for (const name of ['inventory.img', 'stats-dump']) {
    t.true((await readFile(join(dir, name))).equals(await readFile(refFile('read', name))), name);
  }
  const ours = decodeImage(await readFile(join(dir, pagemapFileName(REF_PID))));
  const criu = decodeImage(await readFile(refFile('read', pagemapFileName(REF_PID))));
  t.deepEqual(ours.records[0], criu.records[0]);
  t.is(ours.records.length, criu.records.length);
  ours.records.slice(1).forEach((r, i) => {
    const o = decodePagemapEntry(r);
    const c = decodePagemapEntry(criu.records[i + 1]!);
    t.is(c.compatNrPages, 0);
    t.deepEqual(o, { ...c, compatNrPages: c.nrPages! });
  });
});

// ---- bad input -------------------------------------------------------------------------------

test('unsorted and overlapping entries are rejected and nothing is written', async (t) => {
  const dir = await tempDir(t);
  const unsorted = [ENTRIES[1]!, ENTRIES[0]!];
  await t.throwsAsync(writePreDumpImages(dir, sampleImages(unsorted)), {
    instanceOf: RangeError,
    message: /pagemap entry 1 \(vaddr 0x401000, 1 pages\) is not sorted by vaddr/,
  });
  const overlapping = [
    { vaddr: 0x400000, nrPages: 4, flags: PE_PRESENT },
    { vaddr: 0x402000, nrPages: 1, flags: PE_PRESENT },
  ];
  await t.throwsAsync(writePreDumpImages(dir, sampleImages(overlapping)), {
    message: /entry 1 \(vaddr 0x402000, 1 pages\) overlaps: the previous entry ends at 0x404000/,
  });
  await t.throwsAsync(
    writePreDumpImages(dir, sampleImages([{ vaddr: 0x400000, nrPages: 1, flags: 5 }])),
    { message: /PE_PARENT and PE_PRESENT exclude each other/ },
  );
  await t.throwsAsync(
    writePreDumpImages(dir, sampleImages([{ vaddr: 0x400010, nrPages: 1, flags: 4 }])),
    { message: /page-aligned/ },
  );
  t.deepEqual(await readdir(dir), []);
});

test('a pages file of the wrong size, or an existing inventory, stops the writer', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, pagesFileName(3)), Buffer.alloc(4096));
  await t.throwsAsync(writePreDumpImages(dir, sampleImages()), {
    instanceOf: ImageError,
    message: /pages-3\.img: holds 4096 bytes, but the pagemap lists 74 present pages/,
  });
  t.deepEqual(await readdir(dir), ['pages-3.img']);

  await truncate(join(dir, pagesFileName(3)), PRESENT * 4096);
  await writePreDumpImages(dir, sampleImages());
  await t.throwsAsync(writePreDumpImages(dir, sampleImages()), {
    code: 'EEXIST',
    message: /inventory\.img already exists/,
  });
});

test('a truncated pagemap is an EIMAGE error naming the file', async (t) => {
  const bytes = await readFile(refFile('read', pagemapFileName(REF_PID)));
  const err = t.throws(
    () => decodeImage(bytes.subarray(0, bytes.length - 1), 'pagemap-30583.img'),
    {
      instanceOf: ImageError,
      message: /^pagemap-30583\.img: truncated: record 7 at offset 111 needs 14 bytes, 13 left$/,
    },
  );
  t.is(err?.code, 'EIMAGE');
  t.throws(() => decodeImage(bytes.subarray(0, 10), 'p.img'), {
    message: /p\.img: truncated: record 0 at offset 8 has only 2 of 4 length bytes/,
  });

  const dir = await tempDir(t);
  for (const name of ['inventory.img', 'stats-dump', 'pages-1.img']) {
    await writeFile(join(dir, name), await readFile(refFile('read', name)));
  }
  await writeFile(join(dir, pagemapFileName(REF_PID)), bytes.subarray(0, bytes.length - 3));
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message: /pagemap-30583\.img: truncated/,
  });

  // A record cut inside the message (length prefix consistent): protobuf's error, with the file.
  const rec = Buffer.from(encodePagemapEntry({ vaddr: 0x1000, compatNrPages: 1 })).subarray(0, 3);
  await writeFile(
    join(dir, pagemapFileName(REF_PID)),
    encodeImage('PAGEMAP', [encodePagemapHead({ pagesId: 1 }), rec]),
  );
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message: /pagemap-30583\.img: record 1: /,
  });
});

test('a wrong magic is an EIMAGE error', async (t) => {
  const bytes = Buffer.from(await readFile(refFile('read', 'stats-dump')));
  t.throws(() => decodeImage(bytes, 'stats-dump', 'PAGEMAP'), {
    code: 'EIMAGE',
    message: 'stats-dump: expected a PAGEMAP image, found STATS',
  });
  bytes.writeUInt32LE(0x12345678, 4);
  t.throws(() => decodeImage(bytes, 'stats-dump'), {
    code: 'EIMAGE',
    message: 'stats-dump: unknown image magic 0x55105940 0x12345678',
  });
  bytes.writeUInt32LE(0xdeadbeef, 0);
  t.throws(() => decodeImage(bytes, 'stats-dump'), {
    message: 'stats-dump: not a CRIU image: unknown magic 0xdeadbeef',
  });

  const dir = await tempDir(t);
  await writeFile(join(dir, 'inventory.img'), await readFile(refFile('read', 'inventory.img')));
  await writeFile(join(dir, pagemapFileName(1)), await readFile(refFile('read', 'inventory.img')));
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message: /pagemap-1\.img: expected a PAGEMAP image, found INVENTORY/,
  });
});

test('a directory without inventory.img is incomplete', async (t) => {
  const dir = await tempDir(t);
  for (const name of [pagemapFileName(REF_PID), 'stats-dump']) {
    await writeFile(join(dir, name), await readFile(refFile('splice', name)));
  }
  await writeFile(join(dir, 'pages-1.img'), Buffer.alloc(4096)); // still being written
  await writeFile(join(dir, '.inventory.img.123-abcd.tmp'), Buffer.alloc(3)); // an interrupted write
  const r = await readPreDumpDir(dir);
  t.false(r.complete);
  t.is(r.inventory, undefined);
  t.is(r.pid, REF_PID);
  t.is(r.entries.length, 7);
  t.is(r.pagesFileBytes, 4096);
  t.is(r.stats?.pagesWritten, 77);

  const empty = await tempDir(t);
  t.deepEqual(await readPreDumpDir(empty), { complete: false, entries: [] });
});

test('a complete directory must be consistent', async (t) => {
  const dir = await tempDir(t);
  for (const name of ['inventory.img', pagemapFileName(REF_PID), 'stats-dump']) {
    await writeFile(join(dir, name), await readFile(refFile('read', name)));
  }
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message: /pages-1\.img: missing, but pagemap-30583\.img lists 77 present pages/,
  });
  await writeFile(join(dir, 'pages-1.img'), Buffer.alloc(76 * 4096));
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message:
      /pages-1\.img: size mismatch: 311296 bytes, but pagemap-30583\.img lists 77 present pages × 4096 = 315392 bytes/,
  });
  await truncate(join(dir, 'pages-1.img'), 77 * 4096);
  t.true((await readPreDumpDir(dir)).complete);

  await writeFile(
    join(dir, pagemapFileName(1)),
    await readFile(refFile('read', pagemapFileName(REF_PID))),
  );
  await t.throwsAsync(readPreDumpDir(dir), {
    code: 'EIMAGE',
    message: /2 pagemap images \(pagemap-1\.img, pagemap-30583\.img\); expected exactly one/,
  });

  const noPagemap = await tempDir(t);
  await writeFile(
    join(noPagemap, 'inventory.img'),
    await readFile(refFile('read', 'inventory.img')),
  );
  await t.throwsAsync(readPreDumpDir(noPagemap), {
    message: /has inventory\.img but no pagemap-PID\.img/,
  });
});

test('the hand-written encoders write the bytes protobufjs writes, edge values included', (t) => {
  const protobuf = createRequire(import.meta.url)('protobufjs') as typeof import('protobufjs');
  const root = protobuf.parse(CRIU_PROTO, { keepCase: true }).root;
  const pb = (type: string, obj: Record<string, unknown>): Buffer =>
    Buffer.from(root.lookupType(`criu.${type}`).encode(obj).finish());
  const same = (ours: Uint8Array, theirs: Buffer, what: string): void => {
    t.true(Buffer.from(ours).equals(theirs), `${what}: ${Buffer.from(ours).toString('hex')}`);
  };
  const big = Number.MAX_SAFE_INTEGER;
  for (const vaddr of [0, 1, 127, 128, 0x7fff_ffff_f000, big]) {
    for (const flags of [undefined, 0, PE_PARENT, PE_PRESENT, 0xffff_ffff]) {
      for (const nrPages of [undefined, 0, 300, 2 ** 32, big]) {
        const o: Record<string, unknown> = { vaddr, compat_nr_pages: 0xffff_ffff };
        if (flags !== undefined) o['flags'] = flags;
        if (nrPages !== undefined) o['nr_pages'] = nrPages;
        same(
          encodePagemapEntry({ vaddr, compatNrPages: 0xffff_ffff, flags, nrPages }),
          pb('pagemap_entry', o),
          `pagemap_entry ${JSON.stringify(o)}`,
        );
      }
    }
  }
  for (const inParent of [true, false]) {
    same(
      encodePagemapEntry({ vaddr: 0x1000, compatNrPages: 1, inParent }),
      pb('pagemap_entry', { vaddr: 0x1000, compat_nr_pages: 1, in_parent: inParent }),
      `in_parent ${inParent}`,
    );
  }
  same(encodePagemapHead({ pagesId: 70000 }), pb('pagemap_head', { pages_id: 70000 }), 'head');
  for (const plugins of [undefined, [], ['amdgpu', 'cuda']]) {
    const o: Record<string, unknown> = { img_version: 0, dump_uptime: big, pre_dump_mode: 2 };
    if (plugins) o['plugins_entry'] = { plugins };
    same(
      encodeInventory({ imgVersion: 0, dumpUptime: big, preDumpMode: 2, plugins }),
      pb('inventory_entry', o),
      `inventory ${JSON.stringify(plugins)}`,
    );
  }
  same(encodeInventory({ imgVersion: 1 }), pb('inventory_entry', { img_version: 1 }), 'bare');
  const dump = {
    freezingTime: 1,
    frozenTime: 0xffff_ffff,
    memdumpTime: 300,
    memwriteTime: 0,
    pagesScanned: big,
    pagesSkippedParent: 0,
    pagesWritten: 262189,
    pagesLazy: 0,
  };
  const wire = {
    freezing_time: 1,
    frozen_time: 0xffff_ffff,
    memdump_time: 300,
    memwrite_time: 0,
    pages_scanned: big,
    pages_skipped_parent: 0,
    pages_written: 262189,
    pages_lazy: 0,
  };
  same(encodeStats({ dump }), pb('stats_entry', { dump: wire }), 'stats');
  same(
    encodeStats({
      dump: { ...dump, irmapResolve: 5, pagePipes: 257, pagePipeBufs: 264, shpagesWritten: 9 },
    }),
    pb('stats_entry', {
      dump: { ...wire, irmap_resolve: 5, page_pipes: 257, page_pipe_bufs: 264, shpages_written: 9 },
    }),
    'stats, optional fields',
  );
  same(encodeStats({}), pb('stats_entry', {}), 'empty stats');
});

test('uint64 values beyond Number.MAX_SAFE_INTEGER are refused, not rounded', (t) => {
  t.throws(() => encodePagemapEntry({ vaddr: 2 ** 53, compatNrPages: 1 }), {
    instanceOf: RangeError,
  });
  // 2^63 as a varint, field 1 (vaddr), then compat_nr_pages = 1
  const big = Uint8Array.from([0x08, ...Array<number>(9).fill(0x80), 0x01, 0x10, 0x01]);
  t.throws(() => decodePagemapEntry(big), { message: /vaddr = 9223372036854775808 does not fit/ });
  t.throws(() => decodePagemapEntry(Uint8Array.from([0x10, 0x01])), {
    message: /bad pagemap_entry message: missing required .vaddr./,
  });
});

test('entries of older CRIU versions read as CRIU reads them (in_parent, no flags)', async (t) => {
  const dir = await tempDir(t);
  await writeFile(
    join(dir, pagemapFileName(REF_PID)),
    encodeImage('PAGEMAP', [
      encodePagemapHead({ pagesId: 1 }),
      encodePagemapEntry({ vaddr: 0x1000, compatNrPages: 2 }), // no flags: present
      encodePagemapEntry({ vaddr: 0x3000, compatNrPages: 1, inParent: true }), // in the parent only
      encodePagemapEntry({ vaddr: 0x8000, compatNrPages: 0, flags: PE_PRESENT, nrPages: 5 }),
    ]),
  );
  const d = await readPreDumpDir(dir);
  t.deepEqual(d.entries, [
    { vaddr: 0x1000, nrPages: 2, flags: PE_PRESENT },
    { vaddr: 0x3000, nrPages: 1, flags: PE_PARENT },
    { vaddr: 0x8000, nrPages: 5, flags: PE_PRESENT },
  ]);
});
