import { PredumpError } from '../errors.js';

/** Parses `256M`, `1G`, `4096` (powers of 1024) into bytes. */
export function parseSize(text: string, option: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(text.trim());
  if (!m) {
    throw new PredumpError('EUSAGE', `${option} must be a size such as 256M or 1G, got '${text}'`);
  }
  const shift = { '': 0, K: 10, M: 20, G: 30 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  const bytes = Number(m[1]) * 2 ** shift;
  if (bytes < 4096)
    throw new PredumpError('EUSAGE', `${option} must be at least 4K, got '${text}'`);
  return bytes;
}
