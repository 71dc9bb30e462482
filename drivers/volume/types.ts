/**
 * The volume driver interface: what a backup reads from and a restore writes to. A volume
 * is opened as a block device; a driver may also offer a change source (RBD export-diff):
 * a point-in-time snapshot of the volume whose changed extents since an earlier snapshot
 * arrive with their data, so an incremental touches only the chunks that changed.
 */
import type { BlockDevice } from '../../blockdev/types.js';
import type { DataExtent } from './extents.js';

/** One changed extent of a change stream: data, or a range that now reads as zeroes. */
export interface ChangedExtent {
  offset: number;
  length: number;
  /** the new bytes (length === data.length), or null for a zeroed/discarded range */
  data: Buffer | null;
}

export interface ChangeSource {
  /** recorded with the backup (as change_token) and handed back as `since` for the next incremental, e.g. an RBD snapshot name */
  readonly token: string;
  /** size of the volume at the snapshot */
  readonly size: number;
  /**
   * Extents changed since the snapshot `since` (null: since an empty volume, i.e. every
   * allocated extent), ascending and non-overlapping, each at most a few MiB. When `since`
   * no longer exists the driver falls back to everything and says so in `notes`.
   */
  changes(since: string | null): AsyncIterable<ChangedExtent>;
  /** what the driver wants recorded on the backup (e.g. "parent snapshot gone: full read") */
  readonly notes: string[];
  /** bytes the driver read from the volume so far */
  readonly bytesRead: number;
  /** the backup committed: the driver may drop the parent's snapshot */
  commit(parentToken: string | null): Promise<void>;
  /** the backup failed: drop what was made for it */
  abort(): Promise<void>;
}

export interface VolumeDevice extends BlockDevice {
  /** true for a regular file that blockgate may make sparse (truncate) before a restore */
  readonly sparseFile: boolean;
  /** makes the whole device read as zeroes with nothing allocated (regular files only) */
  makeSparse?(): Promise<void>;
  /** the allocated extents, ascending (a sparse regular file): what is not in one reads as zeroes */
  dataExtents?(): AsyncIterable<DataExtent>;
}

export interface VolumeDriver {
  readonly kind: 'file' | 'rbd';
  /** opens for reading (a backup) or writing (a restore target) */
  open(mode: 'read' | 'write'): Promise<VolumeDevice>;
  /** a point-in-time change source for a backup, when the driver can make one (snapshots) */
  snapshotForBackup?(backupId: string): Promise<ChangeSource>;
  size(): Promise<number>;
}
