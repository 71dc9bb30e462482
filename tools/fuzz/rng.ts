/** A small seeded PRNG (xorshift32) for the fuzzer: every run is replayable from its seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x;
  }
  /** 0 <= n < max (max >= 1) */
  int(max: number): number {
    return max <= 1 ? 0 : this.next() % max;
  }
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
  /** small numbers more often than large ones: 1..max */
  small(max: number): number {
    const bits = 1 + this.int(Math.max(1, Math.floor(Math.log2(Math.max(2, max)))));
    return 1 + this.int(Math.min(max, 2 ** bits));
  }
}

/** A deterministic seed from bytes (FNV-1a), so an input always replays the same way. */
export function seedOf(b: Buffer): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return (h ^ b.length) >>> 0;
}
