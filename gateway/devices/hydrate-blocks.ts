/**
 * The blocks of a hydrating device and the plain mechanics below its ownership logic: the
 * device cut into blocks of `blockSize` (the last one possibly shorter), a lock per block
 * (every change of a block not owned runs under it, see (d) in hydrate.ts), the content a
 * block must have when it is first owned, and zeroing a range of the target; and a lower block
 * device as the source.
 */
import { BlockDeviceError, type BlockDevice } from '../../blockdev/types.js';
import { zeroByWrites } from '../../blockdev/filter.js';
import type { HydrateSource } from './hydrate-types.js';

/**
 * Any block device as the source of a hydrate device (a backup, a window of one, an overlay):
 * block b is its bytes at [b * blockSize, ...); `isHole` names the blocks that read as zeroes
 * without a read (default: none).
 */
export function deviceSource(lower: BlockDevice, blockSize: number, isHole: (b: number) => boolean = () => false): HydrateSource {
  const blocks = Math.ceil(lower.size / blockSize);
  const hole = (b: number) => b >= blocks || isHole(b);
  return {
    size: lower.size,
    isHole: hole,
    read: async (b) => (hole(b) ? null : lower.read(b * blockSize, Math.min(blockSize, lower.size - b * blockSize))),
  };
}

export class HydrateBlocks {
  private readonly locks = new Map<number, Promise<void>>();

  constructor(
    readonly size: number,
    readonly blockSize: number,
    private readonly target: BlockDevice,
    private readonly source: HydrateSource,
  ) {}

  blockStart(b: number): number {
    return b * this.blockSize;
  }

  blockLen(b: number): number {
    return Math.min(this.blockSize, this.size - b * this.blockSize);
  }

  /** splits [offset, offset+length) at block boundaries */
  *segments(offset: number, length: number): Generator<{ b: number; from: number; to: number }> {
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.blockSize);
      const to = Math.min(end, this.blockStart(b) + this.blockLen(b));
      yield { b, from: pos, to };
      pos = to;
    }
  }

  async withLock<T>(b: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(b) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.locks.set(b, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(b) === tail) this.locks.delete(b);
    }
  }

  /**
   * The content block b must have when it is first owned: the backup's bytes, and past the
   * backup's end (a target larger than the backup) what the target has. null: all zeroes.
   */
  async backupBlock(b: number): Promise<Buffer | null> {
    const start = this.blockStart(b);
    const len = this.blockLen(b);
    const inBackup = Math.max(0, Math.min(len, this.source.size - start));
    let data: Buffer | null = null;
    if (inBackup > 0) {
      try {
        data = await this.source.read(b);
      } catch (e) {
        throw e instanceof BlockDeviceError ? e : new BlockDeviceError('EIO', `backup block ${b} (offset ${start}): ${(e as Error).message}`);
      }
      if (data && data.length !== inBackup) throw new BlockDeviceError('EIO', `backup block ${b} holds ${data.length} bytes, expected ${inBackup}`);
    }
    if (inBackup === len) return data;
    const buf = Buffer.alloc(len);
    data?.copy(buf);
    const tail = await this.target.read(start + inBackup, len - inBackup);
    tail.copy(buf, inBackup);
    return buf;
  }

  async targetZero(offset: number, length: number): Promise<void> {
    if (!length) return;
    if (this.target.zero) {
      await this.target.zero(offset, length, { mayTrim: true });
      return;
    }
    await zeroByWrites((o, d) => this.target.write!(o, d), offset, length);
  }
}
