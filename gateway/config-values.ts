/**
 * The value checks every section of the configuration shares (gateway/config.ts and its
 * section modules): whole numbers and sizes in a range, errors prefixed with the file.
 */
import { parseSize } from './size.js';

/** a whole number in [min, max], or a size ("64M") where `size`; `where` names the key in errors */
export function wholeNumber(v: unknown, key: string, min: number, max: number, size = false): number {
  if (size && typeof v === 'string') {
    try {
      v = parseSize(v);
    } catch (e) {
      throw new Error(`${key}: ${(e as Error).message}`);
    }
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${key} must be a whole number from ${min} to ${max}${size ? ' (or a size such as "64M")' : ''}, not ${JSON.stringify(v)}`);
  return v;
}

/** runs a check, prefixing its error with the file it read */
export function inFile<T>(where: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
}
