/**
 * Directory repository driver (local disk or an NFS mount). Objects are files under the
 * root; writes are atomic (temp file in the same directory, fsync, rename, fsync of the
 * directory), so a reader or a crash never sees half an object.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ObjectNotFoundError, type ObjectInfo, type ObjectStore, type PutOptions, checkObjectName } from './types.js';

/** repository objects are private to the appliance's user: files 0600, directories 0700 */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

const TMP_SUFFIX = '.tmp-';

export class DirStore implements ObjectStore {
  readonly location: string;
  private readonly madeDirs = new Set<string>();
  private readonly unsyncedFiles = new Set<string>();
  private readonly unsyncedDirs = new Set<string>();

  constructor(readonly root: string) {
    this.root = path.resolve(root);
    this.location = `dir:${this.root}`;
  }

  private file(name: string): string {
    return path.join(this.root, checkObjectName(name));
  }

  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<void> {
    const file = this.file(name);
    const dir = path.dirname(file);
    if (!this.madeDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true, mode: DIR_MODE });
      this.madeDirs.add(dir);
    }
    const tmp = `${file}${TMP_SUFFIX}${randomBytes(6).toString('hex')}`;
    const fh = await fs.open(tmp, 'wx', FILE_MODE);
    try {
      await fh.writeFile(data);
      if (!opts.deferSync) await fh.datasync();
    } catch (e) {
      await fh.close();
      await fs.rm(tmp, { force: true });
      throw storeError(e, this.location, name);
    }
    await fh.close();
    try {
      await fs.rename(tmp, file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw storeError(e, this.location, name);
    }
    if (opts.deferSync) {
      this.unsyncedFiles.add(file);
      this.unsyncedDirs.add(dir);
    } else {
      await syncDir(dir);
    }
  }

  /** fsyncs every object put with deferSync, then their directories (so the renames are durable too) */
  async sync(): Promise<void> {
    const files = [...this.unsyncedFiles];
    const dirs = [...this.unsyncedDirs];
    this.unsyncedFiles.clear();
    this.unsyncedDirs.clear();
    await inParallel(files, 16, async (f) => {
      const fh = await fs.open(f, 'r');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    });
    await inParallel(dirs, 16, syncDir);
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

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } catch {
    /* some filesystems (NFS) refuse fsync on a directory; the rename is still atomic */
  } finally {
    await fh.close();
  }
}

function storeError(e: unknown, where: string, name: string): Error {
  const err = e as NodeJS.ErrnoException;
  if (err.code === 'ENOSPC') return new Error(`repository ${where} is full (ENOSPC) while writing ${name}`);
  if (err.code === 'EACCES' || err.code === 'EPERM') return new Error(`repository ${where}: permission denied writing ${name}`);
  return new Error(`repository ${where}: ${err.code ?? ''} ${err.message} (${name})`);
}
