/**
 * Volume snapshots (Cinder's `snapshot-create`), in the catalog database `snapshots`: an RBD
 * snapshot of an RBD volume, or a reflink copy (FICLONE) of a file volume under
 * DATA_DIR/snapshots/. A backup may be made from one (`backup-create --snapshot-id`).
 */
import type { Database, RootDatabase } from 'lmdb';
import { NotFoundError } from './errors.js';
import { now } from './records.js';

export const SNAPSHOT_STATES = ['creating', 'available', 'deleting', 'error', 'error_deleting'] as const;
export type SnapshotStatus = (typeof SNAPSHOT_STATES)[number];

export interface SnapshotRecord {
  id: string;
  volume_id: string;
  name: string | null;
  description: string | null;
  status: SnapshotStatus;
  /** GiB, and bytes */
  size: number;
  size_bytes: number;
  project_id: string;
  user_id: string;
  metadata: Record<string, string>;
  /** how it is kept: an RBD snapshot (`location` = its snapshot name) or a reflink file (`location` = its path) */
  kind: 'rbd' | 'reflink';
  location: string;
  created_at: string;
  updated_at: string;
}

export class SnapshotStore {
  readonly db: Database<SnapshotRecord, string>;

  constructor(readonly env: RootDatabase) {
    this.db = env.openDB<SnapshotRecord, string>({ name: 'snapshots' });
  }

  get(id: string): SnapshotRecord {
    const s = this.db.get(id);
    if (!s) throw new NotFoundError('snapshot', id);
    return s;
  }

  find(id: string): SnapshotRecord | undefined {
    return this.db.get(id);
  }

  list(): SnapshotRecord[] {
    return [...this.db.getRange({})].map((e) => e.value).sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  }

  ofVolume(volumeId: string): SnapshotRecord[] {
    return this.list().filter((s) => s.volume_id === volumeId);
  }

  put(s: SnapshotRecord): void {
    this.db.putSync(s.id, s);
  }

  update(id: string, change: Partial<SnapshotRecord>): SnapshotRecord {
    let out!: SnapshotRecord;
    this.env.transactionSync(() => {
      out = { ...this.get(id), ...change, updated_at: now() };
      this.db.putSync(id, out);
    });
    return out;
  }

  remove(id: string): void {
    this.db.removeSync(id);
  }
}
