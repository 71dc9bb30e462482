/**
 * The read-only filesystem over the catalog (layout in tree.ts), as a set of path-based
 * operations that return errno codes. It knows nothing of the FUSE binding (mount.ts wires
 * it to one), so it can be driven directly.
 *
 * - The tree follows the catalog live: it is rebuilt from the catalog when older than
 *   `treeTtlMs` (lookups, readdir), which costs one scan of the backup records.
 * - Every open of an image gets its own BackupDevice (own read-ahead state) over the
 *   appliance's chunk cache (app.chunks, shared with the rest of the process); a partition is
 *   a window over it.
 * - An open image holds a reader lease on its backup, so `backup delete` refuses while it is
 *   open; the device keeps working until the file is closed, whatever the catalog says.
 * - Every operation that would change anything fails with EROFS.
 */
import os from 'node:os';
import { constants as fsc } from 'node:fs';
import type { Appliance } from '../appliance.js';
import type { BackupRecord } from '../../catalog/records.js';
import type { BlockDevice } from '../../blockdev/types.js';
import { BackupDevice } from '../devices/backup-device.js';
import type { ChunkReader } from '../read/chunk-reader.js';
import { readPartitionTable, type PartitionTable } from '../../blockdev/partitions.js';
import { WindowDevice } from '../../blockdev/window.js';
import { READABLE, buildSnapshot, backupPath, type BackupNode, type Snapshot, type VolumeNode } from './tree.js';

const E = os.constants.errno;
/** negative errno, as FUSE bindings take them */
export const errno = {
  ENOENT: -E.ENOENT,
  EIO: -E.EIO,
  EBADF: -E.EBADF,
  EACCES: -E.EACCES,
  ENOTDIR: -E.ENOTDIR,
  EISDIR: -E.EISDIR,
  EINVAL: -E.EINVAL,
  EROFS: -E.EROFS,
  ENODATA: -E.ENODATA,
} as const;

export class FsError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = 'FsError';
  }
}

export interface Stat {
  mode: number;
  size: number;
  nlink: number;
  uid: number;
  gid: number;
  mtime: Date;
  atime: Date;
  ctime: Date;
  blocks: number;
  blksize: number;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const ST_RDONLY = 1;

type Resolved =
  | { kind: 'dir'; mtime: Date; entries: () => Promise<string[]> }
  | { kind: 'link'; mtime: Date; target: string }
  | { kind: 'json'; backup: BackupNode }
  | { kind: 'disk'; backup: BackupNode }
  | { kind: 'part'; backup: BackupNode; number: number; offset: number; size: number };

interface OpenFile {
  /** the path and attributes at open: the path may be renamed or gone while it is open */
  path: string;
  stat: Stat;
  backupId?: string;
  /** image files */
  device?: BlockDevice;
  /** backup.json: its bytes as they were at open */
  bytes?: Buffer;
}

export interface CatalogFsOptions {
  /** how long a tree built from the catalog is reused, ms (default 500) */
  treeTtlMs?: number;
  /** chunks read ahead of a sequential reader (default 8) */
  readAhead?: number;
  /** names the mount in reader leases (`backup delete` shows it) */
  label?: string;
  /** a chunk reader to use instead of the appliance's repository (tests) */
  chunks?: ChunkReader;
  log?: (msg: string) => void;
}

export class CatalogFs {
  readonly chunks: ChunkReader;
  private snap?: Snapshot;
  private snapAt = 0;
  private readonly started = new Date();
  private readonly ttl: number;
  private readonly tables = new Map<string, Promise<PartitionTable>>();
  private readonly files = new Map<number, OpenFile>();
  private nextFd = 1;
  private readonly leases = new Map<string, { count: number; key: string }>();
  private readonly uid = process.getuid?.() ?? 0;
  private readonly gid = process.getgid?.() ?? 0;
  private closed = false;

  constructor(
    private readonly app: Appliance,
    private readonly opts: CatalogFsOptions = {},
  ) {
    this.chunks = opts.chunks ?? app.chunks;
    this.ttl = opts.treeTtlMs ?? 500;
  }

  // ---- the tree

  /** the tree, rebuilt from the catalog when older than the TTL */
  snapshot(): Snapshot {
    const now = Date.now();
    if (!this.snap || now - this.snapAt >= this.ttl) {
      this.snap = buildSnapshot(this.app.catalog.listVolumes(), this.app.catalog.listBackups());
      this.snapAt = now;
      for (const id of this.tables.keys()) if (!this.snap.byId.has(id)) this.tables.delete(id);
    }
    return this.snap;
  }

  /** partition table of a backup (read once, kept while the backup is listed) */
  partitionTable(b: BackupRecord): Promise<PartitionTable> {
    let p = this.tables.get(b.id);
    if (!p) {
      p = (async () => {
        const dev = this.device(b, 0);
        return readPartitionTable((o, l) => dev.read(o, l), dev.size);
      })();
      this.tables.set(b.id, p);
      // a failure to read (a chunk missing right now) is not remembered
      p.catch((e: unknown) => {
        this.opts.log?.(`partition table of backup ${b.id}: ${(e as Error).message}`);
        if (this.tables.get(b.id) === p) this.tables.delete(b.id);
      });
    }
    return p;
  }

  private device(b: BackupRecord, readAhead = this.opts.readAhead ?? 8): BackupDevice {
    return new BackupDevice(b.size_bytes, b.chunk_size, this.app.catalog.mapReader(b), this.chunks, {
      readAhead,
      label: `backup ${b.id}`,
    });
  }

  private async backupFiles(b: BackupNode): Promise<string[]> {
    const t = await this.partitionTable(b.rec).catch(() => undefined);
    return ['backup.json', 'disk.img', ...(t?.partitions ?? []).map((p) => `part${p.number}.img`)];
  }

  async resolve(path: string): Promise<Resolved> {
    const parts = path.split('/').filter((s) => s !== '');
    const snap = this.snapshot();
    const fail = (): never => {
      throw new FsError(errno.ENOENT, `${path}: no such file or directory`);
    };
    if (parts.length === 0) return { kind: 'dir', mtime: this.started, entries: async () => ['volumes', 'by-id'] };
    const [top, a, b, c, ...rest] = parts;
    if (top === 'volumes') {
      if (a === undefined) return { kind: 'dir', mtime: snap.newest > this.started ? snap.newest : this.started, entries: async () => [...snap.volumes.keys()] };
      const vol: VolumeNode = snap.volumes.get(a) ?? fail();
      if (b === undefined) {
        return { kind: 'dir', mtime: vol.mtime, entries: async () => [...vol.backups.keys(), ...(vol.latest ? ['latest'] : [])] };
      }
      if (b === 'latest' && vol.latest && c === undefined) return { kind: 'link', mtime: vol.mtime, target: vol.latest };
      const bk: BackupNode = vol.backups.get(b) ?? fail();
      if (c === undefined) return { kind: 'dir', mtime: bk.mtime, entries: () => this.backupFiles(bk) };
      if (rest.length) fail();
      if (c === 'backup.json') return { kind: 'json', backup: bk };
      if (c === 'disk.img') return { kind: 'disk', backup: bk };
      const m = /^part([1-9]\d*)\.img$/.exec(c);
      if (!m) fail();
      const t = await this.partitionTable(bk.rec).catch(() => fail());
      const p = t.partitions.find((x) => x.number === Number(m![1])) ?? fail();
      return { kind: 'part', backup: bk, number: p.number, offset: p.offset, size: p.size };
    }
    if (top === 'by-id') {
      if (a === undefined) return { kind: 'dir', mtime: snap.newest > this.started ? snap.newest : this.started, entries: async () => [...snap.byId.keys()] };
      const bk = snap.byId.get(a) ?? fail();
      if (b !== undefined) {
        // only reached when the kernel did not follow the link itself
        throw new FsError(errno.ENOTDIR, `${path}: not a directory`);
      }
      return { kind: 'link', mtime: bk.mtime, target: `../${backupPath(bk)}` };
    }
    return fail();
  }

  private json(b: BackupNode): Buffer {
    const rec = this.app.catalog.backups.get(b.rec.id) ?? b.rec;
    return Buffer.from(JSON.stringify(this.app.catalog.view(rec), null, 2) + '\n');
  }

  // ---- operations

  async getattr(path: string): Promise<Stat> {
    const r = await this.resolve(path);
    const base = { uid: this.uid, gid: this.gid, blksize: 4096 };
    const times = (d: Date) => ({ mtime: d, atime: d, ctime: d });
    switch (r.kind) {
      case 'dir':
        return { ...base, ...times(r.mtime), mode: S_IFDIR | 0o555, size: 4096, nlink: 2, blocks: 8 };
      case 'link':
        return { ...base, ...times(r.mtime), mode: S_IFLNK | 0o777, size: Buffer.byteLength(r.target), nlink: 1, blocks: 0 };
      case 'json': {
        const size = this.json(r.backup).length;
        return { ...base, ...times(r.backup.mtime), mode: S_IFREG | 0o444, size, nlink: 1, blocks: Math.ceil(size / 512) };
      }
      case 'disk': {
        const b = r.backup.rec;
        return { ...base, ...times(r.backup.mtime), mode: S_IFREG | 0o444, size: b.size_bytes, nlink: 1, blocks: Math.ceil((b.data_bytes ?? b.size_bytes) / 512) };
      }
      case 'part':
        return { ...base, ...times(r.backup.mtime), mode: S_IFREG | 0o444, size: r.size, nlink: 1, blocks: Math.ceil(r.size / 512) };
    }
  }

  /** attributes of an open file (by handle: its path may no longer lead to it) */
  async fgetattr(path: string, fd: number): Promise<Stat> {
    const f = this.files.get(fd);
    return f ? f.stat : this.getattr(path);
  }

  /**
   * getattr, but a path that no longer resolves while a file opened by it is still open
   * answers with that file's attributes: the kernel asks by path (fstat included), and the
   * file must keep working until it is closed.
   */
  async getattrOrOpen(path: string): Promise<Stat> {
    try {
      return await this.getattr(path);
    } catch (e) {
      if (!(e instanceof FsError) || e.code !== errno.ENOENT) throw e;
      for (const f of this.files.values()) if (f.path === path) return f.stat;
      throw e;
    }
  }

  async readdir(path: string): Promise<string[]> {
    const r = await this.resolve(path);
    if (r.kind !== 'dir') throw new FsError(errno.ENOTDIR, `${path}: not a directory`);
    return ['.', '..', ...(await r.entries())];
  }

  async readlink(path: string): Promise<string> {
    const r = await this.resolve(path);
    if (r.kind !== 'link') throw new FsError(errno.EINVAL, `${path}: not a symbolic link`);
    return r.target;
  }

  /** opens a file for reading; any write access is EROFS */
  async open(path: string, flags: number): Promise<number> {
    if ((flags & 3) !== fsc.O_RDONLY || flags & fsc.O_TRUNC) throw new FsError(errno.EROFS, `${path}: read-only file system`);
    const r = await this.resolve(path);
    if (r.kind === 'dir') throw new FsError(errno.EISDIR, `${path}: is a directory`);
    if (r.kind === 'link') throw new FsError(errno.EINVAL, `${path}: a symbolic link`);
    const stat = await this.getattr(path);
    const fd = this.nextFd++;
    if (r.kind === 'json') {
      const bytes = this.json(r.backup);
      this.files.set(fd, { path, stat: { ...stat, size: bytes.length }, bytes });
      return fd;
    }
    const id = r.backup.rec.id;
    this.lease(id);
    try {
      // the lease is taken; check the backup was not deleted meanwhile
      const rec = this.app.catalog.backups.get(id);
      if (!rec || !READABLE.has(rec.status)) throw new FsError(errno.ENOENT, `${path}: backup ${id} is ${rec?.status ?? 'gone'}`);
      let device: BlockDevice = this.device(rec);
      if (r.kind === 'part') device = new WindowDevice(device, r.offset, r.size);
      this.files.set(fd, { path, stat, backupId: id, device });
      return fd;
    } catch (e) {
      this.unlease(id);
      if (e instanceof FsError) throw e;
      throw new FsError(errno.ENOENT, `${path}: ${(e as Error).message}`);
    }
  }

  /** reads into buf; returns the number of bytes read (0 at the end) */
  async read(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    const f = this.files.get(fd);
    if (!f) throw new FsError(errno.EBADF, `fd ${fd} is not open`);
    if (f.bytes) {
      if (position >= f.bytes.length) return 0;
      return f.bytes.copy(buf, 0, position, Math.min(f.bytes.length, position + length));
    }
    const dev = f.device!;
    if (position >= dev.size) return 0;
    const n = Math.min(length, buf.length, dev.size - position);
    try {
      const data = await dev.read(position, n);
      return data.copy(buf, 0, 0, n);
    } catch (e) {
      this.opts.log?.(`read of ${n} bytes at ${position}: ${(e as Error).message}`);
      throw new FsError(errno.EIO, (e as Error).message);
    }
  }

  async release(fd: number): Promise<void> {
    const f = this.files.get(fd);
    if (!f) return;
    this.files.delete(fd);
    await f.device?.close?.();
    if (f.backupId) this.unlease(f.backupId);
  }

  statfs(): StatFs {
    const snap = this.snapshot();
    let bytes = 0;
    for (const b of snap.byId.values()) bytes += b.rec.data_bytes ?? b.rec.size_bytes;
    const blocks = Math.ceil(bytes / 4096);
    return { bsize: 4096, frsize: 4096, blocks, bfree: 0, bavail: 0, files: snap.byId.size * 3 + snap.volumes.size + 3, ffree: 0, favail: 0, fsid: 0, flag: ST_RDONLY, namemax: 255 };
  }

  get openFiles(): number {
    return this.files.size;
  }

  private lease(backupId: string): void {
    const l = this.leases.get(backupId);
    if (l) {
      l.count++;
      return;
    }
    const key = this.app.catalog.addReaderLease(backupId, `fuse mount ${this.opts.label ?? ''}`.trim());
    this.leases.set(backupId, { count: 1, key });
  }

  private unlease(backupId: string): void {
    const l = this.leases.get(backupId);
    if (!l) return;
    if (--l.count > 0) return;
    this.leases.delete(backupId);
    if (!this.closed) this.app.catalog.removeReaderLease(l.key);
  }

  /** closes every open file and drops every lease */
  async close(): Promise<void> {
    for (const fd of [...this.files.keys()]) await this.release(fd);
    for (const l of this.leases.values()) this.app.catalog.removeReaderLease(l.key);
    this.leases.clear();
    this.closed = true;
  }
}
