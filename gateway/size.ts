/** Byte sizes as users type them: 4096, 512K, 512M, 4G, 1T, 1.5G, 4GiB, 4GB (powers of 1024). */
const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4, P: 1024 ** 5 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$/i.exec(String(text));
  const unit = m ? UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`invalid size "${text}": use bytes or a number with K, M, G or T (e.g. 4G, 512M)`);
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(Math.round(n)) || Math.round(n) !== n) throw new Error(`invalid size "${text}": not a whole number of bytes`);
  return n;
}

export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u ? v.toFixed(v >= 100 ? 0 : 1) : v} ${units[u]}`;
}
