/**
 * What every block device and filter needs once: the range check, zero emulation by writes,
 * and a filter base that passes each call to the device below it, as an nbdkit filter does.
 * A filter owns the device below it unless told otherwise: closing the filter closes it.
 */
import { BlockDeviceError, type BlockDevice, type BlockSizes, type Extent, type ZeroOptions } from './types.js';

/** throws EINVAL unless [offset, offset+length) lies within a device of `size` bytes */
export function checkRange(size: number, offset: number, length: number, what = 'the device'): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new BlockDeviceError('EINVAL', `range ${offset}+${length} is outside ${what} (${size} bytes)`);
  }
}

const ZERO_STEP = 1024 * 1024;
let zeroes: Buffer | undefined;

/** writes zeroes over [offset, offset+length) in bounded steps, from one shared zero buffer */
export async function zeroByWrites(write: (offset: number, data: Buffer) => Promise<void>, offset: number, length: number): Promise<void> {
  zeroes ??= Buffer.alloc(ZERO_STEP);
  for (let o = 0; o < length; o += ZERO_STEP) await write(offset + o, zeroes.subarray(0, Math.min(ZERO_STEP, length - o)));
}

export interface FilterOptions {
  /** close the device below on close (default true) */
  owns?: boolean;
}

/**
 * A block device over another one. Every call is range-checked and passed down unchanged;
 * a subclass overrides what it changes. `zero` falls back to writes where the device below
 * has no zero of its own (ENOTSUP when the caller asked for a fast zero).
 */
export class Filter implements BlockDevice {
  readonly owns: boolean;

  constructor(
    protected readonly lower: BlockDevice,
    opts: FilterOptions = {},
  ) {
    this.owns = opts.owns ?? true;
  }

  get size(): number {
    return this.lower.size;
  }
  get readOnly(): boolean {
    return this.lower.readOnly;
  }
  get canMultiConn(): boolean | undefined {
    return this.lower.canMultiConn;
  }
  get blockSizes(): BlockSizes | undefined {
    return this.lower.blockSizes;
  }

  protected check(offset: number, length: number): void {
    checkRange(this.size, offset, length);
  }

  protected writable(): BlockDevice & Required<Pick<BlockDevice, 'write'>> {
    if (this.readOnly || !this.lower.write) throw new BlockDeviceError('EROFS', 'the device is read-only');
    return this.lower as BlockDevice & Required<Pick<BlockDevice, 'write'>>;
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    return this.lower.read(offset, length);
  }

  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.check(offset, data.length);
    await this.writable().write(offset, data, fua);
  }

  async flush(): Promise<void> {
    await this.lower.flush?.();
  }

  async trim(offset: number, length: number, fua?: boolean): Promise<void> {
    this.check(offset, length);
    if (this.readOnly) throw new BlockDeviceError('EROFS', 'the device is read-only');
    // a trim is advisory: a device that cannot trim keeps its data
    await this.lower.trim?.(offset, length, fua);
  }

  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(offset, length);
    const lower = this.writable();
    if (lower.zero) return lower.zero(offset, length, opts);
    if (opts.fast) throw new BlockDeviceError('ENOTSUP', 'the device has no fast zero');
    await zeroByWrites((o, d) => lower.write(o, d), offset, length);
    if (opts.fua) await lower.flush?.();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    if (!this.lower.blockStatus) return [{ offset, length, hole: false, zero: false }];
    return this.lower.blockStatus(offset, length);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    await this.lower.cache?.(offset, length);
  }

  async close(): Promise<void> {
    if (this.owns) await this.lower.close?.();
  }
}
