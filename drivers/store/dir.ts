/**
 * Directory repository driver (local disk or an NFS mount). Objects are files under the
 * root; writes are atomic (temp file in the same directory, then its name), so a reader or
 * a crash never sees half an object, and durable before they count (see put and DirBatch).
 * A failed fsync fails the put or the batch: nothing is indexed on the strength of it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { type DirOps, nodeDirOps } from './dir-ops.js';
import { ObjectNotFoundError, type ObjectInfo, type ObjectStore, type PutOptions, type WriteBatch, checkObjectName } from './types.js';

/** repository objects are private to the appliance's user: files 0600, directories 0700 */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

const TMP_SUFFIX = '.tmp-';

/**
 * A batch of puts made durable together: its own files and directories, so one backup's
 * sync never returns early because another backup's sync took its files.
 */
class DirBatch implements WriteBatch {
  readonly files = new Set<string>();
  readonly dirs = new Set<string>();
  constructor(private readonly ops: DirOps, private readonly where: string) {}

  /** fsyncs the batch's files, then their directories (so the new names are durable too) */
  async sync(): Promise<void> {
    const files = [...this.files];
    const dirs = [...this.dirs];
    try {
      await inParallel(files, 16, (f) => this.ops.datasync(f));
      await inParallel(dirs, 16, (d) => this.ops.syncDir(d));
    } catch (e) {
      throw storeError(e, this.where, 'a batch of objects');
    }
    for (const f of files) this.files.delete(f);
    for (const d of dirs) this.dirs.delete(d);
  }
}

export class DirStore implements ObjectStore {
  readonly location: string;
  private readonly madeDirs = new Set<string>();

  constructor(readonly root: string, private readonly ops: DirOps = nodeDirOps) {
    this.root = path.resolve(root);
    this.location = `dir:${this.root}`;
  }

  private file(name: string): string {
    return path.join(this.root, checkObjectName(name));
  }

  batch(): WriteBatch {
    return new DirBatch(this.ops, this.location);
  }

  /**
   * Without a batch: temp file, fdatasync, rename, fsync of the directory. In a batch: the
   * temp file gets its name with link(), which never replaces an object that is already
   * there (it may be indexed and durable; an unsynced file must never take its place);
   * only if one is there (a rewrite of a damaged object) is the temp flushed first and
   * renamed over it. The batch's sync() makes the rest durable.
   */
  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<void> {
    const file = this.file(name);
    const dir = path.dirname(file);
    const batch = opts.batch as DirBatch | undefined;
    if (batch && !(batch instanceof DirBatch)) throw new Error('a write batch of another store');
    try {
      if (!this.madeDirs.has(dir)) {
        await this.ops.mkdirp(dir, DIR_MODE);
        // a new directory's own name must be durable before anything in it counts
        for (let d = dir; d !== this.root && d.startsWith(this.root); d = path.dirname(d)) await this.ops.syncDir(path.dirname(d));
        this.madeDirs.add(dir);
      }
      const tmp = `${file}${TMP_SUFFIX}${randomBytes(6).toString('hex')}`;
      try {
        await this.ops.writeNew(tmp, data, FILE_MODE);
        if (!batch) {
          await this.ops.datasync(tmp);
          await this.ops.rename(tmp, file);
          await this.ops.syncDir(dir);
          return;
        }
        try {
          await this.ops.link(tmp, file);
          batch.files.add(file);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
          await this.ops.datasync(tmp);
          await this.ops.rename(tmp, file);
        }
        batch.dirs.add(dir);
      } finally {
        await this.ops.unlink(tmp).catch(() => undefined);
      }
    } catch (e) {
      throw storeError(e, this.location, name);
    }
  }

  async get(name: string): Promise<Buffer> {
    try {
      return await fs.readFile(this.file(name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new ObjectNotFoundError(name, this.location);
      throw storeError(e, this.location, name);
    }
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.file(name), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new ObjectNotFoundError(name, this.location);
      throw storeError(e, this.location, name);
    }
    try {
      const buf = Buffer.alloc(length);
      let n = 0;
      while (n < length) {
        const { bytesRead } = await fh.read(buf, n, length - n, offset + n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      return buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  }

  localPath(name: string): string {
    return this.file(name);
  }

  async getInto(name: string, into: Buffer): Promise<number> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.file(name), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new ObjectNotFoundError(name, this.location);
      throw storeError(e, this.location, name);
    }
    try {
      let n = 0;
      for (;;) {
        const { bytesRead } = await fh.read(into, n, into.length - n, n);
        if (bytesRead === 0) return n;
        n += bytesRead;
        if (n === into.length) {
          const probe = await fh.read(Buffer.alloc(1), 0, 1, n);
          if (probe.bytesRead) throw new Error(`object ${name} is larger than ${into.length} bytes`);
          return n;
        }
      }
    } finally {
      await fh.close();
    }
  }

  async has(name: string): Promise<boolean> {
    try {
      return (await fs.stat(this.file(name))).isFile();
    } catch {
      return false;
    }
  }

  async delete(name: string): Promise<void> {
    await fs.rm(this.file(name), { force: true });
  }

  async *list(prefix: string): AsyncIterable<string> {
    const base = prefix.replace(/\/+$/, '');
    const start = base ? path.join(this.root, base) : this.root;
    yield* walk(this.root, start);
  }

  async *listInfo(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const name of this.list(prefix)) {
      try {
        const st = await fs.stat(path.join(this.root, name));
        yield { name, size: st.size, mtimeMs: st.mtimeMs };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // removed meanwhile
      }
    }
  }
}

async function* walk(root: string, dir: string): AsyncIterable<string> {
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
    throw e;
  }
  for (const ent of entries) {
    const full = path.join(dir, ent.name);
    if (ent.isDirectory()) yield* walk(root, full);
    else if (ent.isFile() && !ent.name.includes(TMP_SUFFIX)) yield path.relative(root, full).split(path.sep).join('/');
  }
}

async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function storeError(e: unknown, where: string, name: string): Error {
  const err = e as NodeJS.ErrnoException;
  if (err.code === 'ENOSPC') return new Error(`repository ${where} is full (ENOSPC) while writing ${name}`);
  if (err.code === 'EACCES' || err.code === 'EPERM') return new Error(`repository ${where}: permission denied writing ${name}`);
  return new Error(`repository ${where}: ${err.code ?? ''} ${err.message} (${name})`);
}
