/**
 * The volume driver interface: what a backup reads from and a restore writes to. A volume
 * is opened as a block device; a driver may also offer a change source, which tells an
 * incremental backup which byte ranges changed since the parent backup (RBD export-diff),
 * so unchanged ranges are neither read nor hashed.
 */
import type { BlockDevice } from '../../nbd/blockdev.js';

export interface ChangedRange {
  offset: number;
  length: number;
}

export interface ChangeSource {
  /** a token recorded with the backup, handed back as `since` for the next incremental (e.g. an RBD snapshot name) */
  readonly token: string;
  /** ranges changed since the parent, ascending; null when the driver cannot tell (read everything) */
  changedSince(sinceToken: string | null): AsyncIterable<ChangedRange> | null;
  /** the backup committed: the driver may drop older snapshots */
  commit(): Promise<void>;
  /** the backup failed: drop what was made for it */
  abort(): Promise<void>;
}

export interface VolumeDevice extends BlockDevice {
  /** true for a regular file that blockgate may make sparse (truncate) before a restore */
  readonly sparseFile: boolean;
}

export interface VolumeDriver {
  readonly kind: 'file' | 'rbd';
  /** opens for reading (a backup) or writing (a restore target) */
  open(mode: 'read' | 'write'): Promise<VolumeDevice>;
  /** a point-in-time source for a backup, when the driver can make one (snapshots); null reads the live volume */
  snapshotForBackup?(backupId: string): Promise<ChangeSource | null>;
  size(): Promise<number>;
}
