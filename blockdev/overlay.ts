/**
 * Copy-on-write overlay filter: a writable block device over a read-only one. Writes go to
 * a sparse scratch file; reads of blocks written here come from it, the rest fall through
 * to the base, which is never touched. A partial write to a block not yet in the overlay
 * first copies that block from the base, so reads never see a mix of zeroes and new data.
 * The base is borrowed, not owned: closing the overlay drops its scratch file only.
 */
import fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { checkRange, zeroByWrites } from './filter.js';
import type { BlockDevice, Extent, ZeroOptions } from './types.js';

export class CowOverlay implements BlockDevice {
  readonly readOnly = false;
  readonly canMultiConn = true;
  readonly size: number;
  readonly blockSizes;
  private readonly owned: Uint8Array;
  private writeLock: Promise<void> = Promise.resolve();

  private constructor(
    private readonly base: BlockDevice,
    private readonly fh: fs.FileHandle,
    private readonly scratchPath: string,
    readonly granularity: number,
  ) {
    this.size = base.size;
    this.owned = new Uint8Array(Math.ceil(base.size / granularity));
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  }

  static async create(base: BlockDevice, scratchPath: string, granularity = 64 * 1024): Promise<CowOverlay> {
    // the overlay's writes are the guest's data: 0600, and never through a symlink
    const fh = await fs.open(scratchPath, fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, 0o600);
    await fh.chmod(0o600);
    await fh.truncate(base.size);
    return new CowOverlay(base, fh, scratchPath, granularity);
  }

  /** bytes written into the overlay so far */
  get ownedBytes(): number {
    return this.owned.reduce((s, v) => s + v, 0) * this.granularity;
  }

  private check(offset: number, length: number): void {
    checkRange(this.size, offset, length);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const g = this.granularity;
    const out = Buffer.allocUnsafe(length);
    const jobs: Promise<void>[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const mine = this.owned[Math.floor(pos / g)] === 1;
      let runEnd = Math.min(end, (Math.floor(pos / g) + 1) * g);
      while (runEnd < end && (this.owned[Math.floor(runEnd / g)] === 1) === mine) runEnd = Math.min(end, runEnd + g);
      const from = pos;
      const len = runEnd - pos;
      jobs.push(
        mine
          ? this.fh.read(out, from - offset, len, from).then(() => undefined)
          : this.base.read(from, len).then((b) => void b.copy(out, from - offset)),
      );
      pos = runEnd;
    }
    await Promise.all(jobs);
    return out;
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.writeLock.then(fn);
    this.writeLock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** copies the base's data of blocks [first, last] that are only partly covered by [offset, end) */
  private async bringIn(offset: number, end: number): Promise<void> {
    const g = this.granularity;
    for (const b of new Set([Math.floor(offset / g), Math.floor((end - 1) / g)])) {
      if (this.owned[b]) continue;
      const bStart = b * g;
      const bEnd = Math.min(this.size, bStart + g);
      if (offset <= bStart && end >= bEnd) continue; // wholly overwritten
      const data = await this.base.read(bStart, bEnd - bStart);
      await this.fh.write(data, 0, data.length, bStart);
      this.owned[b] = 1;
    }
  }

  private markOwned(offset: number, end: number): void {
    const g = this.granularity;
    for (let b = Math.floor(offset / g); b <= Math.floor((end - 1) / g); b++) this.owned[b] = 1;
  }

  write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.check(offset, data.length);
    if (!data.length) return Promise.resolve();
    return this.serialize(async () => {
      await this.bringIn(offset, offset + data.length);
      await this.fh.write(data, 0, data.length, offset);
      this.markOwned(offset, offset + data.length);
      if (fua) await this.fh.datasync();
    });
  }

  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(offset, length);
    await zeroByWrites((o, d) => this.write(o, d), offset, length);
    if (opts.fua) await this.flush();
  }

  /** a trimmed range reads as zeroes afterwards, as on a thin device */
  trim(offset: number, length: number, fua?: boolean): Promise<void> {
    return this.zero(offset, length, { fua });
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const g = this.granularity;
    const b = Math.floor(offset / g);
    if (this.owned[b]) {
      let end = (b + 1) * g;
      while (end < offset + length && this.owned[Math.floor(end / g)]) end += g;
      return [{ offset, length: Math.min(end, offset + length) - offset, hole: false, zero: false }];
    }
    let end = Math.min(offset + length, (b + 1) * g);
    while (end < offset + length && !this.owned[Math.floor(end / g)]) end = Math.min(offset + length, end + g);
    if (!this.base.blockStatus) return [{ offset, length: end - offset, hole: false, zero: false }];
    return this.base.blockStatus(offset, end - offset);
  }

  async close(): Promise<void> {
    await this.fh.close();
    await fs.rm(this.scratchPath, { force: true });
  }
}
