/**
 * Random names (a tracking generation, temporary file names) from the kernel's
 * /dev/urandom: node:crypto would cost a tenth of the CLI's start-up for 8 bytes.
 */
import { closeSync, openSync, readSync } from 'node:fs';

/** `bytes` random bytes as hex. */
export function randomHex(bytes: number): string {
  const buf = Buffer.alloc(bytes);
  const fd = openSync('/dev/urandom', 'r');
  try {
    for (let got = 0; got < bytes;) got += readSync(fd, buf, got, bytes - got, null);
  } finally {
    closeSync(fd);
  }
  return buf.toString('hex');
}
