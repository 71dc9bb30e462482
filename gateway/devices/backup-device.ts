/**
 * A backup as a read-only block device: its block map over a chunk reader. Reading any
 * offset costs one map lookup and one chunk read, whatever the chain depth. Holes read as
 * zeroes and are reported as such by block status. Sequential readers get read-ahead.
 */
import { BlockDeviceError, type BlockDevice, type Extent } from '../../blockdev/types.js';
import { checkRange } from '../../blockdev/filter.js';
import type { MapReader } from '../../catalog/blockmap.js';
import type { ChunkReader } from '../read/chunk-reader.js';

/** chunks one cache() call reads at once */
export const CACHE_WINDOW = 4;

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
    this.readAhead = opts.readAhead ?? 4;
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  }

  private check(offset: number, length: number): void {
    checkRange(this.size, offset, length);
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

  private prefetch(from: number): void {
    const count = Math.ceil(this.size / this.chunkSize);
    for (let i = from; i < Math.min(count, from + this.readAhead); i++) {
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
    for (let pos = offset; pos < end; ) {
      const i = Math.floor(pos / cs);
      const chunkEnd = Math.min((i + 1) * cs, this.size, end);
      const hole = this.map.entry(i) === null;
      const prev = out.at(-1);
      if (prev && prev.hole === hole) prev.length += chunkEnd - pos;
      else out.push({ offset: pos, length: chunkEnd - pos, hole, zero: hole });
      pos = chunkEnd;
    }
    return out;
  }
}
