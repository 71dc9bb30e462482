/**
 * The write path of the directory store as a small interface, so that a model of a disk
 * with a volatile cache (the power-cut tests) can stand in for the real file system. The
 * real implementation is node's fs; every error reaches the caller (nothing swallowed but
 * a directory fsync that the file system does not support, as some NFS servers do not).
 */
import fs from 'node:fs/promises';

export interface DirOps {
  mkdirp(dir: string, mode: number): Promise<void>;
  /** creates `file` (it must not exist) with `data`, not flushed */
  writeNew(file: string, data: Buffer, mode: number): Promise<void>;
  /** flushes the data of `file` to stable storage */
  datasync(file: string): Promise<void>;
  /** a new name for `from` that fails with EEXIST if `to` exists (never replaces) */
  link(from: string, to: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  unlink(file: string): Promise<void>;
  /** makes the entries of `dir` durable */
  syncDir(dir: string): Promise<void>;
}

const UNSUPPORTED_DIR_SYNC = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP']);

export const nodeDirOps: DirOps = {
  async mkdirp(dir, mode) {
    await fs.mkdir(dir, { recursive: true, mode });
  },
  async writeNew(file, data, mode) {
    const fh = await fs.open(file, 'wx', mode);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
  },
  async datasync(file) {
    const fh = await fs.open(file, 'r');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
  },
  link: (from, to) => fs.link(from, to),
  rename: (from, to) => fs.rename(from, to),
  unlink: (file) => fs.rm(file, { force: true }),
  async syncDir(dir) {
    const fh = await fs.open(dir, 'r');
    try {
      await fh.sync();
    } catch (e) {
      // some file systems (NFS) refuse fsync on a directory; their renames are synchronous
      if (!UNSUPPORTED_DIR_SYNC.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
    } finally {
      await fh.close();
    }
  },
};
