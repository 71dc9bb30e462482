/**
 * Block devices for NBD tests: a sparse in-memory device (pages; absent pages are holes that
 * read as zeroes) with switchable optional members and call counters, and a file-backed
 * read-only device. Both implement blockdev/types.ts's BlockDevice and nothing else.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { BlockDeviceError, type BlockDevice, type BlockSizes, type Extent, type ZeroOptions } from '../../blockdev/types.js';

export interface MemDeviceOptions {
  readOnly?: boolean;
  /** page size = allocation granularity (default 64 KiB) */
  pageSize?: number;
  canMultiConn?: boolean;
  blockSizes?: BlockSizes;
  /** which optional members exist (default: all) */
  withFlush?: boolean;
  withTrim?: boolean;
  withZero?: boolean;
  withBlockStatus?: boolean;
  withCache?: boolean;
}

export interface Counters {
  reads: number;
  writes: number;
  fuaWrites: number;
  flushes: number;
  trims: number;
  zeroes: number;
  fastZeroes: number;
  noHoleZeroes: number;
  caches: number;
  blockStatus: number;
}

export class MemDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canMultiConn: boolean;
  readonly blockSizes?: BlockSizes;
  readonly pageSize: number;
  readonly pages = new Map<number, Buffer>();
  readonly counters: Counters = { reads: 0, writes: 0, fuaWrites: 0, flushes: 0, trims: 0, zeroes: 0, fastZeroes: 0, noHoleZeroes: 0, caches: 0, blockStatus: 0 };
  /** optional hook run before every read (to inject failures or delays) */
  beforeRead?: (offset: number, length: number) => Promise<void> | void;
  closed = false;

  write?: BlockDevice['write'];
  flush?: BlockDevice['flush'];
  trim?: BlockDevice['trim'];
  zero?: BlockDevice['zero'];
  blockStatus?: BlockDevice['blockStatus'];
  cache?: BlockDevice['cache'];

  constructor(size: number, opts: MemDeviceOptions = {}) {
    this.size = size;
    this.readOnly = opts.readOnly ?? false;
    this.canMultiConn = opts.canMultiConn ?? true;
    if (opts.blockSizes) this.blockSizes = opts.blockSizes;
    this.pageSize = opts.pageSize ?? 65536;
    if (!this.readOnly) this.write = (o, d, f) => this.doWrite(o, d, f);
    if (opts.withFlush ?? true) this.flush = async () => void this.counters.flushes++;
    if (!this.readOnly && (opts.withTrim ?? true)) this.trim = (o, l, f) => this.doTrim(o, l, f);
    if (!this.readOnly && (opts.withZero ?? true)) this.zero = (o, l, z) => this.doZero(o, l, z);
    if (opts.withBlockStatus ?? true) this.blockStatus = (o, l) => this.doBlockStatus(o, l);
    if (opts.withCache ?? true) this.cache = async () => void this.counters.caches++;
  }

  /** Fills the device from a buffer, leaving all-zero pages unallocated. */
  load(data: Buffer, at = 0): void {
    this.put(at, data);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.counters.reads++;
    if (this.beforeRead) await this.beforeRead(offset, length);
    if (offset < 0 || offset + length > this.size) throw new BlockDeviceError('EINVAL', 'read out of range');
    const out = Buffer.alloc(length);
    const ps = this.pageSize;
    for (let pos = offset; pos < offset + length; ) {
      const idx = Math.floor(pos / ps);
      const inPage = pos - idx * ps;
      const n = Math.min(ps - inPage, offset + length - pos);
      const page = this.pages.get(idx);
      if (page) page.copy(out, pos - offset, inPage, inPage + n);
      pos += n;
    }
    return out;
  }

  /** Whole contents as one buffer. */
  async snapshot(): Promise<Buffer> {
    return this.read(0, this.size);
  }

  private put(offset: number, data: Buffer): void {
    const ps = this.pageSize;
    for (let pos = offset, end = offset + data.length; pos < end; ) {
      const idx = Math.floor(pos / ps);
      const inPage = pos - idx * ps;
      const n = Math.min(ps - inPage, end - pos);
      const src = data.subarray(pos - offset, pos - offset + n);
      let page = this.pages.get(idx);
      if (!page) {
        if (isZero(src)) {
          pos += n;
          continue;
        }
        page = Buffer.alloc(Math.min(ps, this.size - idx * ps));
        this.pages.set(idx, page);
      }
      src.copy(page, inPage);
      pos += n;
    }
  }

  private async doWrite(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.counters.writes++;
    if (fua) this.counters.fuaWrites++;
    if (offset + data.length > this.size) throw new BlockDeviceError('ENOSPC', 'write past end');
    this.put(offset, data);
  }

  private async doTrim(offset: number, length: number, _fua?: boolean): Promise<void> {
    this.counters.trims++;
    this.deallocate(offset, length);
  }

  private deallocate(offset: number, length: number): void {
    const ps = this.pageSize;
    for (let pos = offset, end = offset + length; pos < end; ) {
      const idx = Math.floor(pos / ps);
      const inPage = pos - idx * ps;
      const n = Math.min(ps - inPage, end - pos);
      const page = this.pages.get(idx);
      if (page) {
        if (inPage === 0 && n >= page.length) this.pages.delete(idx);
        else page.fill(0, inPage, inPage + n);
      }
      pos += n;
    }
  }

  private async doZero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.counters.zeroes++;
    if (opts?.fast) this.counters.fastZeroes++;
    if (opts?.mayTrim === false) this.counters.noHoleZeroes++;
    if (opts?.mayTrim === false) {
      // allocate: write explicit zeroes into (possibly new) pages
      const ps = this.pageSize;
      for (let pos = offset, end = offset + length; pos < end; ) {
        const idx = Math.floor(pos / ps);
        const inPage = pos - idx * ps;
        const n = Math.min(ps - inPage, end - pos);
        let page = this.pages.get(idx);
        if (!page) {
          page = Buffer.alloc(Math.min(ps, this.size - idx * ps));
          this.pages.set(idx, page);
        } else page.fill(0, inPage, inPage + n);
        pos += n;
      }
      return;
    }
    this.deallocate(offset, length);
  }

  private async doBlockStatus(offset: number, length: number): Promise<Extent[]> {
    this.counters.blockStatus++;
    const ps = this.pageSize;
    const out: Extent[] = [];
    for (let pos = offset, end = Math.min(offset + length, this.size); pos < end; ) {
      const idx = Math.floor(pos / ps);
      const n = Math.min(ps - (pos - idx * ps), end - pos);
      const hole = !this.pages.has(idx);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ offset: pos, length: n, hole, zero: hole });
      pos += n;
    }
    return out;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Read-only device over a file (no block status): the plain read path, as `nbdkit file` serves. */
export class FileDevice implements BlockDevice {
  readonly readOnly = true;
  readonly canMultiConn = true;
  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<FileDevice> {
    const fh = await open(path, 'r');
    const st = await fh.stat();
    return new FileDevice(fh, st.size);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await this.fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) throw new BlockDeviceError('EIO', 'short read');
      got += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
