/**
 * Raw image files and block devices as volumes. Reads and writes are positional; a regular
 * file can be created sparse, and its size is its length; a block device's size comes from
 * the kernel (BLKGETSIZE64 via `blockdev`).
 */
import fs from 'node:fs/promises';
import { constants as C } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BlockDeviceError, type Extent } from '../../blockdev/types.js';
import { checkRange, zeroByWrites } from '../../blockdev/filter.js';
import type { VolumeDevice, VolumeDriver } from './types.js';
import { type DataExtent, allData, dataExtents } from './extents.js';

const run = promisify(execFile);

export async function volumeFileSize(path: string): Promise<{ size: number; blockDevice: boolean }> {
  let st;
  try {
    st = await fs.stat(path);
  } catch (e) {
    throw new Error(`cannot open volume ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (st.isFile()) return { size: st.size, blockDevice: false };
  if (st.isBlockDevice()) {
    const { stdout } = await run('blockdev', ['--getsize64', path]);
    return { size: Number(stdout.trim()), blockDevice: true };
  }
  throw new Error(`${path} is neither a regular file nor a block device`);
}

export class FileVolumeDevice implements VolumeDevice {
  readonly canMultiConn = true;
  constructor(
    private readonly fh: fs.FileHandle,
    readonly size: number,
    readonly readOnly: boolean,
    readonly sparseFile: boolean,
    /** the file's path, for its allocation map (regular files) */
    private readonly path?: string,
  ) {}

  private check(offset: number, length: number): void {
    checkRange(this.size, offset, length, 'the volume');
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return buf;
  }

  /** fills buf from offset; a short file reads as zeroes past its end */
  async readInto(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    if (this.readOnly) throw new BlockDeviceError('EROFS', 'volume opened read-only');
    this.check(offset, data.length);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    if (fua) await this.fh.datasync();
  }

  async zero(offset: number, length: number, opts?: { fua?: boolean }): Promise<void> {
    await zeroByWrites((o, d) => this.write(o, d), offset, length);
    if (opts?.fua) await this.fh.datasync();
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length: Math.min(length, this.size - offset), hole: false, zero: false }];
  }

  /** a regular file's data extents (SEEK_DATA/SEEK_HOLE); a block device is all data */
  dataExtents(): AsyncIterable<DataExtent> {
    return this.sparseFile && this.path ? dataExtents(this.path, this.size) : allData(this.size);
  }

  /** makes a regular file all holes (used before a restore writes only the data chunks) */
  async makeSparse(): Promise<void> {
    if (!this.sparseFile) throw new Error('not a regular file');
    await this.fh.truncate(0);
    await this.fh.truncate(this.size);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

export class FileVolume implements VolumeDriver {
  readonly kind = 'file' as const;
  constructor(readonly path: string) {}

  async size(): Promise<number> {
    return (await volumeFileSize(this.path)).size;
  }

  async open(mode: 'read' | 'write'): Promise<FileVolumeDevice> {
    const { size, blockDevice } = await volumeFileSize(this.path);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.path, mode === 'read' ? C.O_RDONLY : C.O_RDWR);
    } catch (e) {
      throw new Error(`cannot open volume ${this.path} for ${mode === 'read' ? 'reading' : 'writing'}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return new FileVolumeDevice(fh, size, mode === 'read', !blockDevice, this.path);
  }

  /** creates a new sparse file of the given size; refuses to overwrite */
  static async create(path: string, size: number): Promise<FileVolume> {
    // 0600: a volume holds a whole disk (restored images included)
    const fh = await fs.open(path, 'wx', 0o600);
    try {
      await fh.chmod(0o600);
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
    return new FileVolume(path);
  }
}
