/**
 * A backup as a read-only block device: its block map over a chunk reader. Reading any
 * offset costs one map lookup and one chunk read, whatever the chain depth. Holes read as
 * zeroes and are reported as such by block status. Sequential readers get read-ahead.
 */
import { BlockDeviceError, type BlockDevice, type Extent } from '../../blockdev/types.js';
import { checkRange } from '../../blockdev/filter.js';
import type { MapReader } from '../../catalog/blockmap.js';
import type { ChunkReader } from '../read/chunk-reader.js';
import { mapData, mapRuns } from '../read/map-walk.js';

/** chunks one cache() call reads at once */
export const CACHE_WINDOW = 4;
/** bytes fetched ahead of a sequential reader by default, and read in one cache() window of small blocks */
const READ_AHEAD_BYTES = 4 * 1024 * 1024;

export interface BackupDeviceOptions {
  /** chunks fetched ahead of a sequential reader (0: none) */
  readAhead?: number;
  /** names the backup in errors */
  label?: string;
}

export class BackupDevice implements BlockDevice {
  readonly readOnly = true;
  readonly canMultiConn = true;
  readonly blockSizes;
  private nextSequential = -1;
  private readonly readAhead: number;

  constructor(
    readonly size: number,
    readonly chunkSize: number,
    private readonly map: MapReader,
    private readonly chunks: ChunkReader,
    private readonly opts: BackupDeviceOptions = {},
  ) {
    // read-ahead by bytes, as with 4 MiB chunks: small blocks are fetched many at a time
    this.readAhead = opts.readAhead ?? Math.max(4, Math.ceil(READ_AHEAD_BYTES / chunkSize));
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  }

  private check(offset: number, length: number): void {
    checkRange(this.size, offset, length);
  }

  /** block i is a hole of the backup (reads as zeroes) */
  isHole(i: number): boolean {
    return this.map.entry(i) === null;
  }

  private async chunk(i: number): Promise<Buffer | null> {
    const digest = this.map.entry(i);
    if (digest === null) return null;
    try {
      return await this.chunks.read(digest);
    } catch (e) {
      throw new BlockDeviceError('EIO', `${this.opts.label ?? 'backup'} block ${i} (offset ${i * this.chunkSize}): ${(e as Error).message}`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const cs = this.chunkSize;
    const first = Math.floor(offset / cs);
    const last = length ? Math.floor((offset + length - 1) / cs) : first - 1;
    if (first === this.nextSequential || first === this.nextSequential - 1) this.prefetch(last + 1);
    this.nextSequential = last + 1;
    if (first === last) {
      const data = await this.chunk(first);
      const start = offset - first * cs;
      return data ? data.subarray(start, start + length) : Buffer.alloc(length);
    }
    if (this.chunks.readMany) {
      // the blocks of the range together: neighbours in a pack are one range read
      const blocks = await this.blocks(first, last);
      // every byte is written below: a block's data, or zeroes where the map has a hole
      const out = Buffer.allocUnsafe(length);
      let pos = offset;
      for (const [i, data] of blocks) {
        const cStart = i * cs;
        const from = Math.max(offset, cStart);
        if (from > pos) out.fill(0, pos - offset, from - offset);
        const to = Math.min(offset + length, cStart + data.length);
        data.copy(out, from - offset, from - cStart, to - cStart);
        pos = to;
      }
      if (pos < offset + length) out.fill(0, pos - offset);
      return out;
    }
    const out = Buffer.alloc(length);
    const parts: Promise<void>[] = [];
    for (let i = first; i <= last; i++) {
      parts.push(
        this.chunk(i).then((data) => {
          if (!data) return;
          const cStart = i * cs;
          const from = Math.max(offset, cStart);
          const to = Math.min(offset + length, cStart + data.length);
          data.copy(out, from - offset, from - cStart, to - cStart);
        }),
      );
    }
    await Promise.all(parts);
    return out;
  }

  /** blocks first..last that are not holes, read together; the first failure is thrown as EIO */
  private async blocks(first: number, last: number): Promise<[number, Buffer][]> {
    const idx: number[] = [];
    const digests: string[] = [];
    for (const r of mapData(this.map, this.size, this.chunkSize, first, last + 1)) {
      idx.push(r.index);
      digests.push(r.digest);
    }
    const got = await this.chunks.readMany!(digests);
    return got.map((v, j) => {
      if (v instanceof Error) throw new BlockDeviceError('EIO', `${this.opts.label ?? 'backup'} block ${idx[j]} (offset ${idx[j]! * this.chunkSize}): ${v.message}`);
      return [idx[j]!, v];
    });
  }

  /** blocks below this were asked for by read-ahead already */
  private prefetchedTo = 0;

  /** read-ahead from block `from`: tops the window up once less than half of it is left ahead */
  private prefetch(from: number): void {
    const count = Math.ceil(this.size / this.chunkSize);
    const end = Math.min(count, from + this.readAhead);
    let start = from;
    if (this.prefetchedTo > from && this.prefetchedTo <= end) {
      if (this.prefetchedTo - from >= this.readAhead / 2) return;
      start = this.prefetchedTo;
    }
    if (start >= end) return;
    this.prefetchedTo = end;
    from = start;
    const to = end - 1;
    if (this.chunks.readMany) {
      this.blocks(from, to).catch(() => undefined);
      return;
    }
    for (let i = from; i <= to; i++) {
      this.chunk(i).catch(() => undefined);
    }
  }

  /**
   * Brings the chunks of the range into the chunk cache, CACHE_WINDOW chunks at a time: a
   * request for the whole device holds a few chunks, never the range.
   */
  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.chunkSize);
    if (this.chunks.readMany) {
      const window = Math.max(CACHE_WINDOW, Math.floor(READ_AHEAD_BYTES / this.chunkSize));
      for (let i = first; i <= last; i += window) await this.blocks(i, Math.min(last, i + window - 1));
      return;
    }
    for (let i = first; i <= last; i += CACHE_WINDOW) {
      const jobs: Promise<unknown>[] = [];
      for (let j = i; j <= Math.min(last, i + CACHE_WINDOW - 1); j++) jobs.push(this.chunk(j).then(() => undefined));
      await Promise.all(jobs);
    }
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const cs = this.chunkSize;
    const out: Extent[] = [];
    const end = offset + length;
    if (!length) return out;
    for (const r of mapRuns(this.map, this.size, cs, Math.floor(offset / cs), Math.ceil(end / cs))) {
      const from = Math.max(offset, r.offset);
      const to = Math.min(end, r.offset + r.length);
      const hole = r.digest === null;
      const prev = out.at(-1);
      if (prev && prev.hole === hole) prev.length += to - from;
      else out.push({ offset: from, length: to - from, hole, zero: hole });
    }
    return out;
  }
}
