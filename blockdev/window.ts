/**
 * A window of a block device as a block device of its own: a partition of a disk image.
 * Offsets are relative to the window; nothing outside it can be reached. Read-only: a
 * window serves browsing and export of one partition.
 */
import { Filter, type FilterOptions, checkRange } from './filter.js';
import { BlockDeviceError, type BlockDevice, type Extent } from './types.js';

export class WindowDevice extends Filter {
  constructor(
    lower: BlockDevice,
    readonly start: number,
    private readonly length: number,
    opts?: FilterOptions,
  ) {
    super(lower, opts);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > lower.size) {
      throw new BlockDeviceError('EINVAL', `window ${start}+${length} is outside the device (${lower.size} bytes)`);
    }
  }

  override get size(): number {
    return this.length;
  }
  override get readOnly(): boolean {
    return true;
  }

  protected override check(offset: number, length: number): void {
    checkRange(this.length, offset, length, 'the partition');
  }

  override read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    return this.lower.read(this.start + offset, length);
  }

  override async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    if (!this.lower.blockStatus) return [{ offset, length, hole: false, zero: false }];
    const extents = await this.lower.blockStatus(this.start + offset, length);
    return extents.map((e) => ({ ...e, offset: e.offset - this.start }));
  }

  override async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    await this.lower.cache?.(this.start + offset, length);
  }
}
