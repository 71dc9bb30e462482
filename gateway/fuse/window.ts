/**
 * A window of a block device as a block device of its own: a partition of a disk image.
 * Offsets are relative to the window; nothing outside it can be reached.
 */
import { BlockDeviceError, type BlockDevice, type Extent } from '../../nbd/blockdev.js';

export class WindowDevice implements BlockDevice {
  readonly readOnly = true;
  readonly canMultiConn?: boolean;
  readonly blockSizes;

  constructor(
    private readonly inner: BlockDevice,
    readonly start: number,
    readonly size: number,
  ) {
    if (start < 0 || size < 0 || start + size > inner.size) {
      throw new BlockDeviceError('EINVAL', `window ${start}+${size} is outside the device (${inner.size} bytes)`);
    }
    this.canMultiConn = inner.canMultiConn;
    this.blockSizes = inner.blockSizes;
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new BlockDeviceError('EINVAL', `range ${offset}+${length} is outside the partition (${this.size} bytes)`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    return this.inner.read(this.start + offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    if (!this.inner.blockStatus) return [{ offset, length, hole: false, zero: false }];
    const extents = await this.inner.blockStatus(this.start + offset, length);
    return extents.map((e) => ({ ...e, offset: e.offset - this.start }));
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    await this.inner.cache?.(this.start + offset, length);
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }
}
