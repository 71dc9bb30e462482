/**
 * The jobs of one daemon: the requests the API (and the CLI, through the daemon) make —
 * back up, restore, delete, force-delete, reset-state — checked and recorded synchronously
 * (so the answer shows `creating`, `restoring`, `deleting` at once), then run by the queue
 * (queue.ts) with the handlers (handlers.ts). Quotas are reserved here before anything is
 * recorded and end with the job.
 */
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { type JobRecord, JobStore } from '../../catalog/jobs.js';
import { commitDurably } from '../../catalog/commit.js';
import { QuotaStore } from '../../catalog/quotas.js';
import { SnapshotStore } from '../../catalog/snapshots.js';
import { type BackupRecord, type BackupStatus, sizeGiB, type VolumeRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { newBackupRecord } from '../engine/backup.js';
import { beginDelete } from '../engine/delete.js';
import { prepareRestore } from '../engine/restore.js';
import { backupPayload, endBackingUp, makeHandlers } from './handlers.js';
import { LocalJobQueue, type JobQueue } from './queue.js';
import { recoverJobs } from './recover.js';

export interface BackupRequest {
  volumeId: string;
  name?: string | null;
  description?: string | null;
  incremental?: boolean;
  force?: boolean;
  snapshotId?: string | null;
  metadata?: Record<string, string>;
  userId: string;
  /** the CLI (the appliance's local admin) is outside the API's project quotas */
  skipQuota?: boolean;
}

export interface JobOptions {
  /** jobs run at once (Cinder's backup_max_operations) */
  workers?: number;
  /** jobs waiting beyond the running ones */
  maxQueued?: number;
}

/** a request that cannot be carried out in the current state (HTTP 400 badRequest; CLI exit 4) */
export class InvalidRequestError extends ConflictError {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidRequestError';
  }
}

export class JobService {
  readonly store: JobStore;
  readonly quotas: QuotaStore;
  readonly snapshots: SnapshotStore;
  private q: LocalJobQueue;
  get queue(): LocalJobQueue {
    return this.q;
  }

  constructor(
    readonly app: Appliance,
    opts: JobOptions = {},
    onError: (job: JobRecord, e: Error) => void = () => {},
  ) {
    this.store = new JobStore(app.catalog.env);
    this.quotas = new QuotaStore(app.catalog.env, app.catalog.tallies, (id) => app.catalog.backups.get(id), () => app.catalog.backupFacts.scan());
    this.snapshots = new SnapshotStore(app.catalog.env);
    this.q = new LocalJobQueue(this.store, makeHandlers(app, this.quotas, this.store), opts.workers ?? 2, opts.maxQueued ?? 64, onError);
  }

  get jobQueue(): JobQueue {
    return this.queue;
  }

  /** settles or resumes what a dead process left, then dispatches */
  /** runs its jobs on `q` instead (the cluster's queue, gateway/nodes/jobs.ts); before start only */
  useQueue(q: LocalJobQueue): void {
    this.q = q;
  }

  start(): ReturnType<typeof recoverJobs> {
    const summary = recoverJobs(this);
    this.queue.start();
    return summary;
  }

  stop(): Promise<void> {
    return this.queue.stop();
  }

  async submitBackup(r: BackupRequest): Promise<{ backup: BackupRecord; job: JobRecord }> {
    const { catalog } = this.app;
    // a backup that has just committed: its job is ending and the volume about to leave backing-up
    endBackingUp(this.app, catalog.volume(r.volumeId).id, '');
    const v = catalog.volume(r.volumeId);
    let parentBefore: string | null = null;
    if (r.snapshotId) {
      const s = this.snapshots.find(r.snapshotId);
      if (!s || s.volume_id !== v.id) throw new InvalidRequestError(`Invalid snapshot: snapshot ${r.snapshotId} is not a snapshot of volume ${v.id}.`);
      if (s.status !== 'available') throw new InvalidRequestError(`Invalid snapshot: Snapshot to be backed up must be available, but the current status is "${s.status}".`);
      parentBefore = s.created_at;
    }
    if (v.status === 'in-use' && !r.force) throw new InvalidRequestError('Invalid volume: Backing up an in-use volume must use the force flag.');
    if (v.status !== 'available' && v.status !== 'in-use') throw new InvalidRequestError(`Invalid volume: Volume to be backed up must be available or in-use, but the current status is "${v.status}".`);
    // with a snapshot, the parent is the newest available backup older than the snapshot (Cinder's rule)
    const parent = r.incremental ? catalog.listBackups(v.id).filter((b) => b.status === 'available' && (!parentBefore || b.data_timestamp < parentBefore)).at(-1) : undefined;
    if (r.incremental && !parent) throw new InvalidRequestError('Invalid backup: No backups available to do an incremental backup.');
    const rec0 = await newBackupRecord(this.app, { volume: v.id, force: r.force, name: r.name ?? undefined, description: r.description ?? undefined, snapshotId: r.snapshotId ?? null, projectId: v.project_id, userId: r.userId });
    const rec: BackupRecord = { ...rec0, parent_id: parent?.id ?? null, is_incremental: !!parent, metadata: r.metadata ?? {}, ...(parentBefore ? { data_timestamp: parentBefore } : {}) };
    let job: JobRecord | undefined;
    try {
      // one transaction: the writer registration (refused while a GC runs), the quota
      // reservation (which sees every other one), the record, the volume `backing-up` (one backup
      // of a volume at a time, as in Cinder) and the queued job. It is a child transaction of a
      // batch that concurrent creates share (one commit and one disk sync for all of them, off the
      // event loop): refused, it leaves nothing; the answer waits until the batch is on disk.
      job = await commitDurably(catalog.env, () => {
        catalog.registerWriter(rec.id);
        const res = r.skipQuota ? null : this.quotas.reserve(v.project_id, sizeGiB(v.size), rec.id);
        catalog.putBackup(rec);
        const cur = catalog.volumes.get(v.id);
        if (!cur || (cur.status !== 'available' && cur.status !== 'in-use')) throw new InvalidRequestError(`Invalid volume: Volume to be backed up must be available or in-use, but the current status is "${cur?.status ?? 'deleted'}".`);
        catalog.volumes.putSync(v.id, { ...cur, status: 'backing-up', previous_status: cur.status });
        return (job = this.queue.record({ kind: 'backup', backup_id: rec.id, volume_id: v.id, project_id: rec.project_id, user_id: r.userId, params: r.snapshotId ? { snapshot_id: r.snapshotId } : {}, reservation: res?.id ?? null }));
      });
    } catch (e) {
      // the job was recorded in the transaction that failed to commit
      if (job) this.queue.abandon(job);
      throw e;
    }
    this.queue.dispatch(job);
    return { backup: rec, job };
  }

  async submitRestore(r: { backupId: string; volumeId?: string | null; name?: string | null; userId: string }): Promise<{ backup: BackupRecord; target: VolumeRecord; job: JobRecord }> {
    const { catalog } = this.app;
    const b = catalog.backups.get(r.backupId);
    if (!b || b.status === 'deleted') throw new NotFoundError('backup', r.backupId);
    if (b.status !== 'available') {
      // Cinder's check comes first; when the target is what is busy (a restore into it runs), say so too
      const v = r.volumeId ? this.targetVolume(r.volumeId) : undefined;
      const busy = v && (v.status === 'restoring-backup' || catalog.locks.get(`r:${v.id}`)) ? ` Volume ${v.name ?? v.id} (${v.id}) is ${v.status === 'restoring-backup' ? 'restoring-backup' : 'restoring'}: a restore into it is already running; only one restore into a volume at a time.` : '';
      throw new InvalidRequestError(`Invalid backup: Backup status must be available, but the current status is "${b.status}".${busy}`);
    }
    if (r.volumeId) endBackingUp(this.app, catalog.volume(r.volumeId).id, '');
    const { backup, target } = await prepareRestore(this.app, { backup: b.id, ...(r.volumeId ? { volume: r.volumeId } : { newName: r.name ?? undefined }) });
    try {
      const job = this.queue.submit({ kind: 'restore', backup_id: backup.id, volume_id: target.id, project_id: backup.project_id, user_id: r.userId, params: { new_volume: !r.volumeId } });
      return { backup: catalog.backups.get(backup.id)!, target, job };
    } catch (e) {
      catalog.transition(backup.id, ['restoring'], 'available', { owner: null });
      catalog.releaseRestoreTarget(target.id);
      catalog.updateVolume(target.id, () => ({ status: 'available' }));
      throw e;
    }
  }

  private targetVolume(ref: string): VolumeRecord | undefined {
    try {
      return this.app.catalog.volume(ref);
    } catch {
      return undefined;
    }
  }

  /** DELETE /backups/{id}: the checks and `deleting` now, the repository work as a job */
  submitDelete(backupId: string): { backup: BackupRecord; job: JobRecord } {
    const { catalog } = this.app;
    const before = catalog.backups.get(backupId);
    if (!before || before.status === 'deleted') throw new NotFoundError('backup', backupId);
    if (before.status === 'creating') throw new InvalidRequestError(`Invalid backup: Backup status must be available or error, but the current status is "creating"; use os-force_delete to cancel it.`);
    if (catalog.listBackups().some((x) => x.parent_id === before.id && x.status === 'creating')) throw new InvalidRequestError(`Invalid backup: an incremental backup of it is being created.`);
    const { backup } = wrapConflict(() => beginDelete(this.app, backupId));
    try {
      return { backup, job: this.queue.submit({ kind: 'delete', backup_id: backup.id, volume_id: backup.volume_id, project_id: backup.project_id, user_id: backup.user_id }) };
    } catch (e) {
      catalog.transition(backup.id, ['deleting'], before.status, { owner: null });
      throw e;
    }
  }

  /** os-force_delete: a creating backup is cancelled (its job stops; the record ends `deleted`), anything else deleted */
  async forceDelete(backupId: string): Promise<BackupRecord> {
    const { catalog } = this.app;
    const b = catalog.backups.get(backupId);
    if (!b || b.status === 'deleted') throw new NotFoundError('backup', backupId);
    if (b.status !== 'creating') return this.submitDelete(backupId).backup;
    const job = this.store.activeFor(b.id);
    const begun = wrapConflict(() => beginDelete(this.app, b.id, { force: true }));
    if (job) await this.queue.cancel(job.id, 'cancelled by os-force_delete');
    else if (!begun.cancelRequested) return this.submitDelete(backupId).backup;
    return catalog.backups.get(b.id)!;
  }

  /**
   * os-reset_status: `available` or `error`. A running or queued job on the backup is cancelled
   * first (a restore: its target becomes error_restoring), and the status applied when it stops.
   */
  async resetStatus(backupId: string, status: 'available' | 'error', waitMs = 30_000): Promise<BackupRecord> {
    const { catalog } = this.app;
    const b = catalog.backups.get(backupId);
    if (!b || b.status === 'deleted') throw new NotFoundError('backup', backupId);
    const job = this.store.activeFor(b.id);
    if (job && (job.kind === 'restore' || job.kind === 'backup')) {
      if (job.kind === 'backup' && status === 'available') throw new InvalidRequestError(`Invalid backup: backup ${b.id} is being created; it can only be reset to error (which cancels it).`);
      const reason = `cancelled by reset-state to ${status}`;
      await this.queue.cancel(job.id, reason, status);
      await Promise.race([this.queue.wait(job.id), new Promise((r) => setTimeout(r, waitMs).unref())]);
      return catalog.backups.get(b.id)!;
    }
    if (status === 'available' && !catalog.maps.get(b.id)) throw new InvalidRequestError(`Invalid backup: backup ${b.id} has no committed data; it cannot be made available.`);
    const out = catalog.transition(b.id, [b.status], status as BackupStatus, { owner: null, fail_reason: status === 'error' ? (b.fail_reason ?? 'reset to error') : null });
    if (b.status === 'restoring') {
      for (const v of catalog.listVolumes()) if (v.status === 'restoring-backup' && !catalog.locks.get(`r:${v.id}`)) catalog.updateVolume(v.id, () => ({ status: 'error_restoring', status_reason: 'reset-state' }));
    }
    this.app.events.emit('backup.reset_status', b.id, backupPayload(out));
    return out;
  }
}

function wrapConflict<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof ConflictError) throw new InvalidRequestError(`Invalid backup: ${e.message}`);
    throw e;
  }
}
