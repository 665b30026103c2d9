/**
 * The protobuf records of a CRIU pre-dump, with CRIU's own message and field names and numbers
 * (proto2, from criu/images/{inventory,pagemap,stats}.proto). Checked against the bytes of
 * images written by CRIU 4.2 (see /work/shared/criu-reference).
 *
 * Messages are decoded by protobufjs, loaded on the first decode, and encoded by hand (below):
 * this module maps them to typed objects.
 * uint64 fields are numbers here: they are decoded as bigint and converted, and a value above
 * Number.MAX_SAFE_INTEGER is an error (x86_64/aarch64 user addresses are below 2^48).
 */
import { createRequire } from 'node:module';
import type { Message, Type } from 'protobufjs';

export const CRIU_PROTO = `
syntax = "proto2";
package criu;

// inventory.proto (only the fields a pre-dump writes; others are skipped when read)
message plugins_entry {
  repeated string plugins = 12;
}
message inventory_entry {
  required uint32 img_version = 1;
  optional uint64 dump_uptime = 8;     // microseconds since boot (CRIU: /proc/uptime, 10 ms steps)
  optional uint32 pre_dump_mode = 9;   // 1 splice, 2 read
  optional plugins_entry plugins_entry = 12;
}

// pagemap.proto
message pagemap_head {
  required uint32 pages_id = 1;
}
message pagemap_entry {
  required uint64 vaddr = 1;
  required uint32 compat_nr_pages = 2; // "nr_pages" before CRIU 4.0; CRIU 4.2 writes 0 here
  optional bool in_parent = 3;         // obsolete, replaced by flags & PE_PARENT
  optional uint32 flags = 4;
  optional uint64 nr_pages = 5;
}

// stats.proto
message dump_stats_entry {
  required uint32 freezing_time = 1;
  required uint32 frozen_time = 2;
  required uint32 memdump_time = 3;
  required uint32 memwrite_time = 4;
  required uint64 pages_scanned = 5;
  required uint64 pages_skipped_parent = 6;
  required uint64 pages_written = 7;
  optional uint32 irmap_resolve = 8;
  required uint64 pages_lazy = 9;      // required in CRIU's schema: crit rejects a record without it
  optional uint64 page_pipes = 10;
  optional uint64 page_pipe_bufs = 11;
  optional uint64 shpages_scanned = 12;
  optional uint64 shpages_skipped_parent = 13;
  optional uint64 shpages_written = 14;
}
message stats_entry {
  optional dump_stats_entry dump = 1;
  // restore_stats_entry restore = 2: not used by a pre-dump
}
`;

interface Types {
  inventory: Type;
  pagemapHead: Type;
  pagemapEntry: Type;
  stats: Type;
}

let loaded: Types | undefined;

/**
 * protobufjs and CRIU's message types, loaded on the first decode (a fifth of the CLI's
 * start-up otherwise): a command that reads no image never pays for them, and a pre-dump
 * without parent images reads none.
 */
function types(): Types {
  if (loaded) return loaded;
  const protobuf = createRequire(import.meta.url)('protobufjs') as typeof import('protobufjs');
  const root = protobuf.parse(CRIU_PROTO, { keepCase: true }).root;
  loaded = {
    inventory: root.lookupType('criu.inventory_entry'),
    pagemapHead: root.lookupType('criu.pagemap_head'),
    pagemapEntry: root.lookupType('criu.pagemap_entry'),
    stats: root.lookupType('criu.stats_entry'),
  };
  return loaded;
}

/** Loads the codec now, so that the first image read or written does not wait for it. */
export function loadCodec(): void {
  types();
}

export interface InventoryEntry {
  imgVersion: number;
  dumpUptime?: number;
  preDumpMode?: number;
  /** Present (possibly empty) in CRIU 4.x images; CRIU 4.2's pre-dump writes it empty. */
  plugins?: string[];
}

export interface PagemapHead {
  pagesId: number;
}

export interface PagemapEntryRecord {
  vaddr: number;
  compatNrPages: number;
  inParent?: boolean;
  flags?: number;
  nrPages?: number;
}

export interface DumpStatsEntry {
  freezingTime: number;
  frozenTime: number;
  memdumpTime: number;
  memwriteTime: number;
  pagesScanned: number;
  pagesSkippedParent: number;
  pagesWritten: number;
  irmapResolve?: number;
  pagesLazy: number;
  pagePipes?: number;
  pagePipeBufs?: number;
  shpagesScanned?: number;
  shpagesSkippedParent?: number;
  shpagesWritten?: number;
}

export interface StatsEntry {
  dump?: DumpStatsEntry;
}

/** A plain object as handed to / received from protobufjs (CRIU's snake_case names). */
type Fields = Record<string, unknown>;

// ---- value checks (encoding: reject what protobufjs would silently truncate) ----

function u32(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw new RangeError(`${name} must be a uint32, got ${v}`);
  }
  return v;
}

function u64(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${v}`);
  }
  return v;
}

// ---- value extraction (decoding: protobufjs objects are untyped) ----

function num(obj: Fields, key: string): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`${key} = ${v} does not fit a JavaScript number`);
    }
    return Number(v);
  }
  throw new TypeError(`${key}: unexpected ${typeof v}`);
}

function req(obj: Fields, key: string): number {
  const v = num(obj, key);
  if (v === undefined) throw new TypeError(`missing required '${key}'`);
  return v;
}

function decodeFields(type: Type, bytes: Uint8Array): Fields {
  let msg: Message;
  try {
    msg = type.decode(bytes);
  } catch (err) {
    // protobufjs throws a non-native ProtocolError for a missing required field, and a
    // RangeError "index out of range" for a cut message: report both as plain Errors.
    const what = err instanceof Error ? err.message : String(err);
    throw new Error(`bad ${type.name} message: ${what}`, { cause: err });
  }
  // defaults: false keeps presence: a field absent on the wire is absent here.
  const obj: Fields = type.toObject(msg, { longs: BigInt, defaults: false, arrays: false });
  return obj;
}

// ---- encoding, by hand ----
//
// The records a pre-dump writes hold only varints and length-delimited fields: they are
// encoded here, so that writing images never loads protobufjs (parsing the schema costs
// more CPU than the rest of writing a pre-dump's images, on the cores that copy the pages).
// Fields go out in field-number order and an absent optional field is not written, as
// protobufjs and protobuf-c write them; a test checks the bytes against protobufjs's.

/** A field's value on the wire: a varint, a submessage or a string (length-delimited). */
type Wire = number | boolean | Uint8Array | string;

/** The varint of a non-negative safe integer (checked by u32/u64 before). */
function pushVarint(out: number[], v: number): void {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/** Encodes `[field number, value]` pairs (undefined: absent), in the order given. */
function encodeFields(fields: ReadonlyArray<readonly [number, Wire | undefined]>): Uint8Array {
  const out: number[] = [];
  for (const [id, v] of fields) {
    if (v === undefined) continue;
    if (typeof v === 'number' || typeof v === 'boolean') {
      pushVarint(out, id * 8);
      pushVarint(out, Number(v));
    } else {
      const bytes = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
      pushVarint(out, id * 8 + 2);
      pushVarint(out, bytes.length);
      for (const b of bytes) out.push(b);
    }
  }
  return Uint8Array.from(out);
}

// ---- inventory_entry ----

export function encodeInventory(e: InventoryEntry): Uint8Array {
  return encodeFields([
    [1, u32('img_version', e.imgVersion)],
    [8, e.dumpUptime === undefined ? undefined : u64('dump_uptime', e.dumpUptime)],
    [9, e.preDumpMode === undefined ? undefined : u32('pre_dump_mode', e.preDumpMode)],
    [
      12,
      e.plugins === undefined
        ? undefined
        : encodeFields(e.plugins.map((name) => [12, name] as const)),
    ],
  ]);
}

export function decodeInventory(bytes: Uint8Array): InventoryEntry {
  const o = decodeFields(types().inventory, bytes);
  const e: InventoryEntry = { imgVersion: req(o, 'img_version') };
  const uptime = num(o, 'dump_uptime');
  if (uptime !== undefined) e.dumpUptime = uptime;
  const mode = num(o, 'pre_dump_mode');
  if (mode !== undefined) e.preDumpMode = mode;
  const plugins = o['plugins_entry'];
  if (plugins !== undefined && plugins !== null) {
    const list = (plugins as Fields)['plugins'];
    e.plugins = Array.isArray(list) ? list.map(String) : [];
  }
  return e;
}

// ---- pagemap_head, pagemap_entry ----

export function encodePagemapHead(h: PagemapHead): Uint8Array {
  return encodeFields([[1, u32('pages_id', h.pagesId)]]);
}

export function decodePagemapHead(bytes: Uint8Array): PagemapHead {
  return { pagesId: req(decodeFields(types().pagemapHead, bytes), 'pages_id') };
}

export function encodePagemapEntry(e: PagemapEntryRecord): Uint8Array {
  return encodeFields([
    [1, u64('vaddr', e.vaddr)],
    [2, u32('compat_nr_pages', e.compatNrPages)],
    [3, e.inParent],
    [4, e.flags === undefined ? undefined : u32('flags', e.flags)],
    [5, e.nrPages === undefined ? undefined : u64('nr_pages', e.nrPages)],
  ]);
}

export function decodePagemapEntry(bytes: Uint8Array): PagemapEntryRecord {
  const o = decodeFields(types().pagemapEntry, bytes);
  const e: PagemapEntryRecord = {
    vaddr: req(o, 'vaddr'),
    compatNrPages: req(o, 'compat_nr_pages'),
  };
  if (typeof o['in_parent'] === 'boolean') e.inParent = o['in_parent'];
  const flags = num(o, 'flags');
  if (flags !== undefined) e.flags = flags;
  const nrPages = num(o, 'nr_pages');
  if (nrPages !== undefined) e.nrPages = nrPages;
  return e;
}

// ---- stats_entry ----

const STATS_OPTIONAL: ReadonlyArray<[keyof DumpStatsEntry, string, 'u32' | 'u64']> = [
  ['irmapResolve', 'irmap_resolve', 'u32'],
  ['pagePipes', 'page_pipes', 'u64'],
  ['pagePipeBufs', 'page_pipe_bufs', 'u64'],
  ['shpagesScanned', 'shpages_scanned', 'u64'],
  ['shpagesSkippedParent', 'shpages_skipped_parent', 'u64'],
  ['shpagesWritten', 'shpages_written', 'u64'],
];

export function encodeStats(s: StatsEntry): Uint8Array {
  const d = s.dump;
  if (d === undefined) return encodeFields([]);
  const opt = (
    key: keyof DumpStatsEntry,
    wire: string,
    kind: 'u32' | 'u64',
  ): number | undefined => {
    const v = d[key];
    return v === undefined ? undefined : kind === 'u32' ? u32(wire, v) : u64(wire, v);
  };
  const dump = encodeFields([
    [1, u32('freezing_time', d.freezingTime)],
    [2, u32('frozen_time', d.frozenTime)],
    [3, u32('memdump_time', d.memdumpTime)],
    [4, u32('memwrite_time', d.memwriteTime)],
    [5, u64('pages_scanned', d.pagesScanned)],
    [6, u64('pages_skipped_parent', d.pagesSkippedParent)],
    [7, u64('pages_written', d.pagesWritten)],
    [8, opt('irmapResolve', 'irmap_resolve', 'u32')],
    [9, u64('pages_lazy', d.pagesLazy)],
    ...STATS_OPTIONAL.slice(1).map(
      ([key, wire, kind], i) => [10 + i, opt(key, wire, kind)] as const,
    ),
  ]);
  return encodeFields([[1, dump]]);
}

export function decodeStats(bytes: Uint8Array): StatsEntry {
  const o = decodeFields(types().stats, bytes);
  const raw = o['dump'];
  if (raw === undefined || raw === null) return {};
  const r = raw as Fields;
  const dump: DumpStatsEntry = {
    freezingTime: req(r, 'freezing_time'),
    frozenTime: req(r, 'frozen_time'),
    memdumpTime: req(r, 'memdump_time'),
    memwriteTime: req(r, 'memwrite_time'),
    pagesScanned: req(r, 'pages_scanned'),
    pagesSkippedParent: req(r, 'pages_skipped_parent'),
    pagesWritten: req(r, 'pages_written'),
    pagesLazy: req(r, 'pages_lazy'),
  };
  for (const [key, wire] of STATS_OPTIONAL) {
    const v = num(r, wire);
    if (v !== undefined) dump[key] = v;
  }
  return { dump };
}
