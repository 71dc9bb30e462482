/**
 * Generic byte mutations, in the style of libFuzzer/AFL: bit flips, random bytes, boundary
 * integers (8/16/32/64 bits, both byte orders), arithmetic on integer fields, length-field
 * edits (a field set to the number of bytes that follow it, plus or minus a little),
 * insertions, deletions, repeats, copies, splices with another corpus entry, truncations and
 * dictionary tokens. A few of them are stacked per input.
 */
import type { Rng } from './rng.js';

const INTERESTING_8 = [0, 1, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0x64];
const INTERESTING_32 = [0, 1, 2, 3, 4, 7, 8, 12, 16, 28, 32, 64, 127, 128, 255, 256, 511, 512, 1023, 1024, 4095, 4096, 4097, 65535, 65536, 65537, 0x7fff, 0x8000, 0xffff, 1 << 20, (1 << 20) + 1, 1 << 24, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const INTERESTING_64 = [0n, 1n, 0xffffffffn, 0x100000000n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n - 512n];

export interface MutateOptions {
  maxLen: number;
  dictionary?: readonly Buffer[];
  /** other corpus entries for splicing */
  other?: () => Buffer;
}

function writeInt(b: Buffer, pos: number, width: 1 | 2 | 4 | 8, le: boolean, v: bigint): void {
  const mask = (1n << BigInt(width * 8)) - 1n;
  v &= mask;
  for (let i = 0; i < width; i++) {
    const byte = Number((v >> BigInt(8 * i)) & 0xffn);
    b[le ? pos + i : pos + width - 1 - i] = byte;
  }
}

function readInt(b: Buffer, pos: number, width: 1 | 2 | 4 | 8, le: boolean): bigint {
  let v = 0n;
  for (let i = 0; i < width; i++) v |= BigInt(b[le ? pos + i : pos + width - 1 - i]!) << BigInt(8 * i);
  return v;
}

const WIDTHS = [1, 2, 4, 8] as const;

/** One mutation of `input` (a new buffer; the input is not modified). */
export function mutateOnce(input: Buffer, r: Rng, o: MutateOptions): Buffer {
  let b = Buffer.from(input);
  const n = b.length;
  const op = r.int(16);
  switch (op) {
    case 0: // bit flip
      if (n) b[r.int(n)]! ^= 1 << r.int(8);
      return b;
    case 1: // random byte
      if (n) b[r.int(n)] = r.next() & 0xff;
      return b;
    case 2: // interesting 8
      if (n) b[r.int(n)] = r.pick(INTERESTING_8);
      return b;
    case 3:
    case 4: {
      // boundary integer of 16/32/64 bits
      const width = r.pick([2, 4, 4, 8] as const);
      if (n < width) return b;
      const v = width === 8 ? r.pick(INTERESTING_64) : BigInt(r.pick(INTERESTING_32));
      writeInt(b, r.int(n - width + 1), width, r.chance(0.5), r.chance(0.1) ? -v : v);
      return b;
    }
    case 5: {
      // arithmetic on an integer field
      const width = r.pick(WIDTHS);
      if (n < width) return b;
      const pos = r.int(n - width + 1);
      const le = r.chance(0.5);
      const d = BigInt(1 + r.int(35));
      writeInt(b, pos, width, le, readInt(b, pos, width, le) + (r.chance(0.5) ? d : -d));
      return b;
    }
    case 6: {
      // length field: the bytes that follow it, give or take a little
      const width = r.pick([2, 4, 4, 8] as const);
      if (n < width) return b;
      const pos = r.int(n - width + 1);
      const rest = n - pos - width;
      const v = BigInt(Math.max(0, rest + r.pick([0, 0, 0, -1, 1, -2, 2, -4, 4, -8, 8, -16, 16])));
      writeInt(b, pos, width, r.chance(0.5), v);
      return b;
    }
    case 7: {
      // insert random bytes
      const k = r.small(32);
      const pos = r.int(n + 1);
      return Buffer.concat([b.subarray(0, pos), r.chance(0.5) ? r.bytes(k) : Buffer.alloc(k, r.pick(INTERESTING_8)), b.subarray(pos)]);
    }
    case 8: {
      // delete a range
      if (!n) return b;
      const pos = r.int(n);
      const k = Math.min(n - pos, r.small(Math.max(1, n >> 2)));
      return Buffer.concat([b.subarray(0, pos), b.subarray(pos + k)]);
    }
    case 9: {
      // repeat a range
      if (!n) return b;
      const pos = r.int(n);
      const k = Math.min(n - pos, r.small(64));
      const times = r.small(8);
      const piece = b.subarray(pos, pos + k);
      return Buffer.concat([b.subarray(0, pos + k), ...Array.from({ length: times }, () => piece), b.subarray(pos + k)]);
    }
    case 10: {
      // copy a range over another place
      if (n < 2) return b;
      const from = r.int(n);
      const to = r.int(n);
      const k = Math.min(n - from, n - to, r.small(64));
      b.copy(b, to, from, from + k);
      return b;
    }
    case 11: {
      // splice with another corpus entry
      const other = o.other?.();
      if (!other || !other.length) return b;
      const cut = r.int(n + 1);
      const oc = r.int(other.length);
      return Buffer.concat([b.subarray(0, cut), other.subarray(oc)]);
    }
    case 12: // truncate
      return b.subarray(0, r.int(n + 1));
    case 13:
    case 14: {
      // dictionary token, inserted or overwriting
      const dict = o.dictionary;
      if (!dict || !dict.length) return b;
      const t = r.pick(dict);
      const pos = r.int(n + 1);
      if (r.chance(0.5)) return Buffer.concat([b.subarray(0, pos), t, b.subarray(pos)]);
      if (pos + t.length <= n) {
        t.copy(b, pos);
        return b;
      }
      return Buffer.concat([b.subarray(0, pos), t]);
    }
    default: {
      // shuffle a few bytes of a small window
      if (n < 2) return b;
      const pos = r.int(n - 1);
      const k = Math.min(n - pos, 2 + r.int(7));
      for (let i = k - 1; i > 0; i--) {
        const j = r.int(i + 1);
        const t = b[pos + i]!;
        b[pos + i] = b[pos + j]!;
        b[pos + j] = t;
      }
      void b;
      return b;
    }
  }
}

/** A stack of 1..8 mutations (fewer more often), cut to maxLen. */
export function mutateBytes(input: Buffer, r: Rng, o: MutateOptions): Buffer {
  let b = input;
  const k = 1 << r.int(4);
  for (let i = 0; i < k; i++) {
    b = mutateOnce(b, r, o);
    if (b.length > o.maxLen) b = b.subarray(0, o.maxLen);
  }
  return b;
}
