/**
 * Figures of repeated measurements: the median and the range, so that a noisy
 * machine shows as a wide range rather than as a wrong number.
 */

export interface Stat {
  median: number;
  min: number;
  max: number;
}

/** The median, minimum and maximum of at least one number. */
export function stat(xs: readonly number[]): Stat {
  if (xs.length === 0) throw new RangeError('stat of no measurements');
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return {
    median: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2,
    min: s[0]!,
    max: s[s.length - 1]!,
  };
}

/** Every field of a Stat transformed by `f` (a unit change). */
export function mapStat(s: Stat, f: (x: number) => number): Stat {
  return { median: f(s.median), min: f(s.min), max: f(s.max) };
}

/** A Stat rounded to `digits` decimals (µs for milliseconds at 3): no false precision in JSON. */
export function rounded(s: Stat, digits: number): Stat {
  const k = 10 ** digits;
  return mapStat(s, (x) => Math.round(x * k) / k);
}

/** `1.23 [1.10–1.40]` with `digits` decimals; `–` without a figure. */
export function formatStat(s: Stat | null, digits: number): string {
  if (s === null) return '–';
  const f = (x: number): string => x.toFixed(digits);
  return s.min === s.max ? f(s.median) : `${f(s.median)} [${f(s.min)}–${f(s.max)}]`;
}

/** Decimals that show a figure of this size to about three significant digits. */
export function digitsFor(x: number): number {
  const a = Math.abs(x);
  return a >= 100 ? 0 : a >= 10 ? 1 : 2;
}
