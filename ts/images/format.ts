/**
 * CRIU image framing.
 *
 *   inventory.img      u32 INVENTORY magic, then records
 *   pagemap-PID.img    u32 IMG_COMMON, u32 PAGEMAP, then records
 *   stats-dump         u32 IMG_SERVICE, u32 STATS, then records
 *
 * A record is a u32 length followed by that many bytes of one protobuf message. CRIU writes
 * the integers in native byte order; both targets (x86_64, aarch64) are little-endian, so
 * little-endian is what is written and read here. `pages-ID.img` is raw page data, no magic.
 */

/** Magic numbers, as in criu/include/magic.h. */
export const MAGIC = {
  IMG_COMMON: 0x54564319,
  IMG_SERVICE: 0x55105940,
  INVENTORY: 0x58313116,
  PAGEMAP: 0x56084025,
  STATS: 0x57093306,
} as const;

/** The images this module knows, and the magics their files start with. */
export const IMAGE_HEADERS = {
  INVENTORY: [MAGIC.INVENTORY],
  PAGEMAP: [MAGIC.IMG_COMMON, MAGIC.PAGEMAP],
  STATS: [MAGIC.IMG_SERVICE, MAGIC.STATS],
} as const;

export type ImageKind = keyof typeof IMAGE_HEADERS;

/** pagemap_entry.flags bits. */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** An error about the content of an image file; `code` is 'EIMAGE', `file` names the file. */
export class ImageError extends Error {
  readonly code = 'EIMAGE';
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = 'ImageError';
  }
}

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/** Builds an image file: the magic(s) of `kind`, then each record with its length. */
export function encodeImage(kind: ImageKind, records: readonly Uint8Array[]): Buffer {
  const header = IMAGE_HEADERS[kind];
  const size = header.length * 4 + records.reduce((n, r) => n + 4 + r.length, 0);
  const buf = Buffer.alloc(size);
  let off = 0;
  for (const m of header) off = buf.writeUInt32LE(m, off);
  for (const r of records) {
    off = buf.writeUInt32LE(r.length, off);
    buf.set(r, off);
    off += r.length;
  }
  return buf;
}

export interface DecodedImage {
  kind: ImageKind;
  /** The protobuf message bytes of each record (views into the input buffer). */
  records: Uint8Array[];
}

/**
 * Splits an image file into its records. `file` is only used in error messages; with
 * `expect`, an image of another kind is an error.
 */
export function decodeImage(buf: Uint8Array, file = '<image>', expect?: ImageKind): DecodedImage {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u32 = (off: number): number => view.getUint32(off, true);
  if (buf.length < 4) throw new ImageError(file, `too short for a magic (${buf.length} bytes)`);

  const first = u32(0);
  let kind: ImageKind;
  let off: number;
  if (first === MAGIC.INVENTORY) {
    kind = 'INVENTORY';
    off = 4;
  } else if (first === MAGIC.IMG_COMMON || first === MAGIC.IMG_SERVICE) {
    if (buf.length < 8) throw new ImageError(file, 'truncated after the first magic');
    const second = u32(4);
    const found = (Object.keys(IMAGE_HEADERS) as ImageKind[]).find(
      (k) => IMAGE_HEADERS[k][0] === first && IMAGE_HEADERS[k][1] === second,
    );
    if (found === undefined) {
      throw new ImageError(file, `unknown image magic ${hex(first)} ${hex(second)}`);
    }
    kind = found;
    off = 8;
  } else {
    throw new ImageError(file, `not a CRIU image: unknown magic ${hex(first)}`);
  }
  if (expect !== undefined && kind !== expect) {
    throw new ImageError(file, `expected a ${expect} image, found ${kind}`);
  }

  const records: Uint8Array[] = [];
  while (off < buf.length) {
    if (buf.length - off < 4) {
      throw new ImageError(
        file,
        `truncated: record ${records.length} at offset ${off} has only ${buf.length - off} of 4 length bytes`,
      );
    }
    const len = u32(off);
    off += 4;
    if (len > buf.length - off) {
      throw new ImageError(
        file,
        `truncated: record ${records.length} at offset ${off - 4} needs ${len} bytes, ${buf.length - off} left`,
      );
    }
    records.push(buf.subarray(off, off + len));
    off += len;
  }
  return { kind, records };
}
