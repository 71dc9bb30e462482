/**
 * Volume snapshots (Cinder's snapshot-create / snapshot-delete) and reading a backup from one:
 *
 * - an RBD volume: an RBD snapshot `snapshot-<id>` of its image; a backup from it streams
 *   `rbd export-diff POOL/IMAGE@snapshot-<id> -` (allocated extents only) through a sequential
 *   device (the backup reads chunks in order);
 * - a file volume: a reflink copy (FICLONE: shares the blocks, copies nothing) of its file under
 *   DATA_DIR/snapshots/<id>.img on the same filesystem, made only where the filesystem has
 *   reflinks (xfs with reflink=1, btrfs); elsewhere the create is refused with one clear line,
 *   since a full copy would not be a cheap point-in-time snapshot.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ConflictError } from '../../catalog/catalog.js';
import { type SnapshotRecord, SnapshotStore } from '../../catalog/snapshots.js';
import { now, sizeGiB, type VolumeRecord } from '../../catalog/records.js';
import { FileVolume } from '../../drivers/volume/file.js';
import { RbdVolume } from '../../drivers/volume/rbd.js';
import { BlockDeviceError, type BlockDevice } from '../../blockdev/types.js';
import type { Appliance } from '../appliance.js';

/** the filesystem cannot make a reflink copy: HTTP 400 with this message */
export class SnapshotUnsupportedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotUnsupportedError';
  }
}

export function snapshotsDir(app: Appliance): string {
  return path.join(app.config.dataDir, 'snapshots');
}

/** the reflink copy's directory: beside the volume file when that is elsewhere, so the clone stays on its filesystem */
function cloneDir(app: Appliance, v: VolumeRecord): string {
  return v.managed ? snapshotsDir(app) : path.join(path.dirname(v.path), '.blockgate-snapshots');
}

export async function createSnapshot(app: Appliance, v: VolumeRecord, o: { name: string | null; description: string | null; metadata: Record<string, string>; projectId: string; userId: string }): Promise<SnapshotRecord> {
  const store = new SnapshotStore(app.catalog.env);
  if (v.status !== 'available' && v.status !== 'in-use' && v.status !== 'backing-up') throw new ConflictError(`volume ${v.id} is ${v.status}; a snapshot needs an available or in-use volume`);
  const id = randomUUID();
  const t = now();
  const base = { id, volume_id: v.id, name: o.name, description: o.description, project_id: o.projectId, user_id: o.userId, metadata: o.metadata, created_at: t, updated_at: t };
  if (v.driver === 'rbd') {
    const vol = app.volumeDriver(v) as RbdVolume;
    const snap = `snapshot-${id}`;
    await vol.createSnapshot(snap);
    const size = await vol.snapshotSize(snap);
    const rec: SnapshotRecord = { ...base, status: 'available', size: sizeGiB(size), size_bytes: size, kind: 'rbd', location: snap };
    store.put(rec);
    return rec;
  }
  const dir = cloneDir(app, v);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, `${id}.img`);
  try {
    await fsp.copyFile(v.path, file, fs.constants.COPYFILE_FICLONE_FORCE);
  } catch (e) {
    await fsp.rm(file, { force: true });
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOSYS') {
      throw new SnapshotUnsupportedError(`volume ${v.id} is a file on a filesystem without reflinks (FICLONE: ${code}); snapshots of file volumes need xfs with reflink=1 or btrfs (RBD volumes always have them)`);
    }
    throw e;
  }
  await fsp.chmod(file, 0o600);
  const size = (await fsp.stat(file)).size;
  const rec: SnapshotRecord = { ...base, status: 'available', size: sizeGiB(size), size_bytes: size, kind: 'reflink', location: file };
  store.put(rec);
  return rec;
}

export async function deleteSnapshot(app: Appliance, s: SnapshotRecord): Promise<void> {
  const store = new SnapshotStore(app.catalog.env);
  store.update(s.id, { status: 'deleting' });
  try {
    if (s.kind === 'rbd') {
      const v = app.catalog.volumes.get(s.volume_id);
      if (v) await (app.volumeDriver(v) as RbdVolume).removeSnapshot(s.location);
    } else {
      await fsp.rm(s.location, { force: true });
    }
    store.remove(s.id);
  } catch (e) {
    store.update(s.id, { status: 'error_deleting' });
    throw e;
  }
}

/** what a backup from a snapshot reads: the reflink file, or the RBD snapshot's export-diff stream */
export async function openSnapshot(app: Appliance, s: SnapshotRecord): Promise<BlockDevice> {
  if (s.kind === 'reflink') return new FileVolume(s.location).open('read');
  const v = app.catalog.volume(s.volume_id);
  return new DiffStreamDevice(app.volumeDriver(v) as RbdVolume, s.location, s.size_bytes);
}

/**
 * A read-only device over `rbd export-diff IMAGE@SNAP -` for a reader that goes forward only
 * (a backup reads its chunks in order): extents arrive in ascending order, gaps read as zeroes.
 */
class DiffStreamDevice implements BlockDevice {
  readonly readOnly = true;
  private readonly it: AsyncGenerator<{ type: 'size'; size: number } | { type: 'data'; offset: number; data: Buffer } | { type: 'zero'; offset: number; length: number }>;
  private pos = 0;
  /** the extent that reaches past what was read so far */
  private held: { offset: number; data: Buffer | null; length: number } | null = null;
  private ended = false;

  constructor(vol: RbdVolume, snap: string, readonly size: number) {
    this.it = vol.exportDiff(snap, null);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    await this.readInto(buf, offset);
    return buf;
  }

  async readInto(buf: Buffer, offset: number): Promise<void> {
    if (offset < this.pos) throw new BlockDeviceError('EINVAL', `the snapshot stream reads forward only (asked for ${offset}, at ${this.pos})`);
    buf.fill(0);
    const end = offset + buf.length;
    for (;;) {
      if (!this.held) {
        if (this.ended) break;
        const r = await this.it.next();
        if (r.done) {
          this.ended = true;
          break;
        }
        const x = r.value;
        if (x.type === 'size') continue;
        this.held = x.type === 'data' ? { offset: x.offset, data: x.data, length: x.data.length } : { offset: x.offset, data: null, length: x.length };
      }
      const h = this.held;
      if (h.offset >= end) break;
      const from = Math.max(h.offset, offset);
      const to = Math.min(h.offset + h.length, end);
      if (h.data && to > from) h.data.copy(buf, from - offset, from - h.offset, to - h.offset);
      if (h.offset + h.length <= end) this.held = null;
      else break;
    }
    this.pos = end;
  }

  async close(): Promise<void> {
    await this.it.return(undefined);
  }
}
