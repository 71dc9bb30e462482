/** The records the catalog keeps: volumes and backups, with Cinder's fields and states. */

export const BACKUP_STATES = ['creating', 'available', 'deleting', 'deleted', 'error', 'error_deleting', 'restoring'] as const;
export type BackupStatus = (typeof BACKUP_STATES)[number];

export const VOLUME_STATES = ['available', 'in-use', 'creating', 'backing-up', 'restoring-backup', 'error_restoring', 'deleting', 'error'] as const;
export type VolumeStatus = (typeof VOLUME_STATES)[number];

export interface Owner {
  pid: number;
  host: string;
  since: string;
  /** the kernel's boot id and the process start time (ticks since boot): a reused pid, or a reboot, is not the owner */
  boot?: string;
  start?: number;
}

export interface VolumeRecord {
  id: string;
  name: string;
  /** 'file' covers raw image files and block devices; 'rbd' is a Ceph RBD image */
  driver: 'file' | 'rbd';
  /** file path, or pool/image for rbd */
  path: string;
  size: number;
  status: VolumeStatus;
  /** blockgate created the file for this volume (so it may remove it) */
  managed: boolean;
  project_id: string;
  user_id: string;
  created_at: string;
  updated_at: string;
  /** why status is error/error_restoring */
  status_reason?: string | null;
  /** rbd: the cluster's ceph.conf and ceph user, when given at registration (else CEPH_CONF / defaults) */
  ceph_conf?: string | null;
  ceph_user?: string | null;
  /** while `backing-up`: the status to return to (available or in-use), as Cinder's previous_status */
  previous_status?: VolumeStatus | null;
  /** a description given through the API */
  description?: string | null;
}

export interface BackupRecord {
  id: string;
  name: string;
  description: string;
  volume_id: string;
  volume_name: string;
  snapshot_id: string | null;
  parent_id: string | null;
  is_incremental: boolean;
  status: BackupStatus;
  fail_reason: string | null;
  /** GiB, rounded up, as Cinder reports it */
  size: number;
  size_bytes: number;
  /** chunks that hold data (holes excluded) */
  object_count: number;
  /** chunks this backup wrote that the repository did not have, and their stored bytes */
  new_chunks: number;
  new_bytes: number;
  /** bytes of the volume that are not holes */
  data_bytes: number;
  container: string;
  project_id: string;
  user_id: string;
  availability_zone: string;
  created_at: string;
  updated_at: string;
  data_timestamp: string;
  chunk_size: number;
  codec: string;
  /** the process running a long operation on it (creating, restoring, deleting) */
  owner: Owner | null;
  /** notes on how the backup was made (e.g. a fall-back to a full read) */
  notes: string[];
  /** the change source's token (e.g. RBD snapshot name) the next incremental diffs against */
  change_token: string | null;
  /** bytes read from the volume to make this backup */
  bytes_read: number;
  /** a protected backup is never pruned or deleted (backup protect / unprotect) */
  protected?: boolean;
  /** the last verification: when, its outcome, and the blocks that failed (bounded list) */
  verified_at?: string | null;
  verify_state?: 'ok' | 'failed' | null;
  verify_failures?: VerifyFailure[];
  /** key/value metadata given through the API (Cinder 3.43+) */
  metadata?: Record<string, string>;
}

/** One block of a backup that failed verification. */
export interface VerifyFailure {
  /** chunk index in the backup's map, and its byte offset in the volume */
  block: number;
  offset: number;
  /** the chunk (or map page) digest the block names */
  chunk: string;
  error: string;
}

/** The record as users see it, with has_dependent_backups computed from the live chain. */
export type BackupView = Omit<BackupRecord, 'owner'> & { has_dependent_backups: boolean };

export const GiB = 1024 ** 3;
export const sizeGiB = (bytes: number): number => Math.ceil(bytes / GiB);
export const now = (): string => new Date().toISOString();

/** A backup whose data must be kept (its chunks and pages are live). */
export function isLive(status: BackupStatus): boolean {
  return status !== 'deleted';
}
