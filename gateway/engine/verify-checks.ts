/**
 * What verify checks object by object, and what it remembers: the bounded cache of results
 * shared by the backups of one run, the tests of an object's presence and stored size, the
 * tell between a bad object and an outage, and the bounded-parallel walk.
 */
import fs from 'node:fs/promises';
import { ObjectNotFoundError, type ObjectStore } from '../../drivers/store/types.js';

export interface ChunkResult {
  /** why the object is bad, or null */
  error: string | null;
  /** plaintext length (full mode), -1 when not known */
  n: number;
}

/** Results of one run, bounded: the oldest good results are forgotten first (and re-checked if met again). */
export class VerifyCache {
  private readonly results = new Map<string, ChunkResult>();
  private readonly inflight = new Map<string, Promise<ChunkResult>>();
  /** chunks found bad and taken out of the index: how many, and the first of them */
  badChunks = 0;
  readonly badList: string[] = [];
  chunksChecked = 0;
  pagesChecked = 0;
  bytesRead = 0;
  /** sizes of the packs met in this run (packed repositories) */
  readonly packSizes = new Map<string, Promise<number | null>>();

  constructor(readonly maxEntries = 250_000) {}

  /** a result is known or being found */
  has(key: string): boolean {
    return this.results.has(key) || this.inflight.has(key);
  }

  async get(key: string, check: () => Promise<ChunkResult>): Promise<ChunkResult> {
    const hit = this.results.get(key);
    if (hit) return hit;
    let p = this.inflight.get(key);
    if (!p) {
      p = check().then(
        (r) => {
          this.inflight.delete(key);
          this.remember(key, r);
          return r;
        },
        (e: unknown) => {
          this.inflight.delete(key);
          throw e;
        },
      );
      this.inflight.set(key, p);
    }
    return p;
  }

  private remember(key: string, r: ChunkResult): void {
    this.results.set(key, r);
    if (this.results.size <= this.maxEntries) return;
    for (const k of this.results.keys()) {
      this.results.delete(k);
      if (this.results.size <= this.maxEntries) break;
    }
  }
}

/** true for errors that say the object itself is bad; anything else is an outage */
export function isDataError(e: unknown): boolean {
  const name = (e as Error)?.name;
  const code = (e as NodeJS.ErrnoException)?.code;
  return name === 'ChunkCorruptError' || name === 'ObjectNotFoundError' || code === 'ENOENT' || code === 'EIO';
}

/**
 * Whether an object exists with the expected size: null if so, else why not. A local store
 * answers with a stat; any other with one ranged read of the 2 bytes from size-1, which
 * returns exactly 1 byte only when the object is `expected` bytes long.
 */
/** an object's size: a stat for a local store, else a ranged read at the expected end; null if missing */
export async function storedSize(store: ObjectStore, name: string, expected: number | undefined): Promise<number | null> {
  const local = store.localPath?.(name);
  try {
    if (local) return (await fs.stat(local)).size;
    if (!expected) return (await store.has(name)) ? Infinity : null;
    const n = (await store.getRange(name, expected - 1, 2)).length;
    return n === 0 ? expected - 1 : n === 1 ? expected : expected + 1;
  } catch (e) {
    if (e instanceof ObjectNotFoundError || (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

export async function checkStoredSize(store: ObjectStore, name: string, digest: string, expected: number | undefined): Promise<string | null> {
  const local = store.localPath?.(name);
  let size: number | null | 'longer' | 'shorter';
  if (local) {
    try {
      const st = await fs.stat(local);
      size = st.isFile() ? st.size : null;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      size = null;
    }
  } else if (expected === undefined || expected < 1) {
    size = (await store.has(name)) ? -1 : null;
  } else {
    try {
      const n = (await store.getRange(name, expected - 1, 2)).length;
      size = n === 1 ? expected : n === 0 ? 'shorter' : 'longer';
    } catch (e) {
      if (!(e instanceof ObjectNotFoundError)) throw e;
      size = null;
    }
  }
  if (size === null) return `chunk ${digest} is missing from the repository`;
  if (expected === undefined) return `chunk ${digest} has no entry in the chunk index (an earlier verify found it bad); a full verify reads it`;
  if (typeof size === 'string') return `chunk ${digest} is ${size} than the ${expected} bytes the chunk index says`;
  if (size !== expected && size !== -1) return `chunk ${digest} is ${size} bytes in the repository; the chunk index says ${expected}`;
  return null;
}

/** runs `worker` over the items of `source` with at most `n` in flight; the first outage error ends it */
export async function drain<T>(source: AsyncIterator<T> | Iterator<T>, n: number, worker: (item: T) => Promise<void>): Promise<void> {
  let failed: unknown;
  const lane = async () => {
    while (failed === undefined) {
      const next = await source.next();
      if (next.done) return;
      try {
        await worker(next.value);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: n }, lane));
  if (failed !== undefined) throw failed;
}

