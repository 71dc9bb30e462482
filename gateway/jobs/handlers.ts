/**
 * What each kind of job does when a runner takes it, through the engine's own functions
 * (runBackup, runRestore, completeDelete), and the Cinder notifications it emits on the
 * appliance's event bus (backup.create.start|end|error, backup.createprogress,
 * backup.restore.*, backup.restoreprogress, backup.delete.*). Resource states around a job
 * (the volume `backing-up`, the quota reservation, a reset-state asked for during a restore)
 * are settled here whatever the outcome.
 */
import { ConflictError } from '../../catalog/catalog.js';
import { commitBatched } from '../../catalog/commit.js';
import type { JobRecord, JobStore } from '../../catalog/jobs.js';
import type { QuotaStore } from '../../catalog/quotas.js';
import { SnapshotStore } from '../../catalog/snapshots.js';
import { type BackupRecord, type BackupStatus, now } from '../../catalog/records.js';
import type { BlockDevice } from '../../blockdev/types.js';
import type { Appliance } from '../appliance.js';
import { runBackup } from '../engine/backup.js';
import { completeDelete } from '../engine/delete.js';
import { runRestore } from '../engine/restore.js';
import type { EventPayload, EventType } from '../events/bus.js';
import type { JobContext, JobHandlers } from './queue.js';
import { openSnapshot } from './snapshots.js';

export function backupPayload(b: BackupRecord, extra: EventPayload = {}): EventPayload {
  return { backup_id: b.id, volume_id: b.volume_id, project_id: b.project_id, user_id: b.user_id, status: b.status, size: b.size, fail_reason: b.fail_reason, snapshot_id: b.snapshot_id ?? undefined, created_at: b.created_at, ...extra };
}

/** progress events: at most one per 2 s or per 5 percent */
function progressEmitter(app: Appliance, type: EventType, b: BackupRecord, ctx: JobContext) {
  let lastAt = 0;
  let lastPct = -100;
  return (done: number, total: number) => {
    ctx.progress(done, total);
    const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 0;
    const t = Date.now();
    if (pct - lastPct < 5 && t - lastAt < 2000) return;
    lastAt = t;
    lastPct = pct;
    app.events.emit(type, b.id, backupPayload(b, { status: type === 'backup.createprogress' ? 'creating' : 'restoring', percent: pct, bytes: done }));
  };
}

/** the volume leaves `backing-up` for the status it had (unless another backup of it is being created) */
export function endBackingUp(app: Appliance, volumeId: string, backupId: string): void {
  if (app.catalog.volumes.get(volumeId)?.status !== 'backing-up') return;
  app.catalog.env.transactionSync(() => leaveBackingUp(app, volumeId, backupId));
}

/** endBackingUp, inside a write transaction */
function leaveBackingUp(app: Appliance, volumeId: string, backupId: string): void {
  const { catalog } = app;
  const v = catalog.volumes.get(volumeId);
  if (!v || v.status !== 'backing-up') return;
  if (catalog.backupFacts.scan().some((b) => b.volume_id === volumeId && b.id !== backupId && b.status === 'creating')) return;
  catalog.volumes.putSync(volumeId, { ...v, status: v.previous_status ?? 'available', previous_status: null, updated_at: now() });
}

/** a backup job has ended: its quota reservation ends and its volume leaves `backing-up`, in a batched commit */
function endBackupJob(app: Appliance, quotas: QuotaStore, job: JobRecord): Promise<void> {
  return commitBatched(app.catalog.env, () => {
    quotas.end(job.reservation);
    leaveBackingUp(app, job.volume_id ?? '', job.backup_id);
  });
}

/** a backup that will not run: cancelled while queued, or its daemon died before it started */
export function dropBackup(app: Appliance, quotas: QuotaStore, job: JobRecord, reason: string): void {
  const { catalog } = app;
  const b = catalog.backups.get(job.backup_id);
  if (b && (b.status === 'creating' || b.status === 'deleting')) {
    const to: BackupStatus = b.status === 'deleting' ? 'deleted' : ((job.cancel?.reset_to as BackupStatus | undefined) ?? 'error');
    const out = catalog.transition(b.id, ['creating', 'deleting'], to, { owner: null, fail_reason: reason });
    catalog.unregisterWriter(b.id);
    app.events.emit(to === 'deleted' ? 'backup.delete.end' : 'backup.create.error', b.id, backupPayload(out));
  }
  quotas.end(job.reservation);
  endBackingUp(app, job.volume_id ?? '', job.backup_id);
}

export function makeHandlers(app: Appliance, quotas: QuotaStore, jobs: JobStore): JobHandlers {
  const { catalog } = app;
  return {
    backup: {
      async run(ctx) {
        const job = ctx.job;
        let rec = catalog.backups.get(job.backup_id);
        if (!rec || rec.status !== 'creating') {
          dropBackup(app, quotas, job, rec?.status === 'deleting' ? 'cancelled by force-delete before it started' : `backup ${job.backup_id} is ${rec?.status ?? 'gone'}`);
          return;
        }
        app.events.emit('backup.create.start', rec.id, backupPayload(rec));
        let from: BlockDevice | undefined;
        try {
          const snapId = job.params.snapshot_id as string | undefined;
          if (snapId) from = await openSnapshot(app, new SnapshotStore(catalog.env).get(snapId));
          const out = await runBackup(app, rec, progressEmitter(app, 'backup.createprogress', rec, ctx), from);
          rec = out;
          if (out.status === 'deleted') app.events.emit('backup.delete.end', out.id, backupPayload(out));
          else app.events.emit('backup.create.end', out.id, backupPayload(out));
        } catch (e) {
          const cur = catalog.backups.get(job.backup_id);
          if (cur) app.events.emit(cur.status === 'deleted' ? 'backup.delete.end' : 'backup.create.error', cur.id, backupPayload(cur, { fail_reason: cur.fail_reason ?? (e as Error).message }));
          throw e;
        } finally {
          await from?.close?.().catch(() => undefined);
          await endBackupJob(app, quotas, job);
        }
      },
      dropped(job, reason) {
        dropBackup(app, quotas, job, reason);
      },
    },
    restore: {
      async run(ctx) {
        const job = ctx.job;
        const backup = catalog.backups.get(job.backup_id)!;
        const target = catalog.volume(job.volume_id!);
        app.events.emit('backup.restore.start', backup.id, backupPayload(backup, { target_volume_id: target.id }));
        try {
          await runRestore(app, backup, target, progressEmitter(app, 'backup.restoreprogress', backup, ctx));
          app.events.emit('backup.restore.end', backup.id, backupPayload(catalog.backups.get(backup.id)!, { target_volume_id: target.id }));
        } catch (e) {
          app.events.emit('backup.restore.error', backup.id, backupPayload(catalog.backups.get(backup.id)!, { target_volume_id: target.id, fail_reason: (e as Error).message }));
          throw e;
        } finally {
          applyReset(app, jobs, job);
        }
      },
      dropped(job, reason) {
        // never started: the target was claimed and marked restoring-backup at submit
        const b = catalog.backups.get(job.backup_id);
        if (b?.status === 'restoring') catalog.transition(b.id, ['restoring'], 'available', { owner: null });
        if (job.volume_id && catalog.volumes.get(job.volume_id)) catalog.updateVolume(job.volume_id, () => ({ status: 'error_restoring', status_reason: reason }));
        if (job.volume_id) catalog.releaseRestoreTarget(job.volume_id);
        applyReset(app, jobs, job);
        if (b) app.events.emit('backup.restore.error', b.id, backupPayload(catalog.backups.get(b.id)!, { target_volume_id: job.volume_id, fail_reason: reason }));
      },
    },
    delete: {
      async run(ctx) {
        const b = catalog.backups.get(ctx.job.backup_id)!;
        app.events.emit('backup.delete.start', b.id, backupPayload(b));
        try {
          const out = await completeDelete(app, b.id);
          app.events.emit('backup.delete.end', b.id, backupPayload(out));
        } catch (e) {
          app.events.emit('backup.delete.error', b.id, backupPayload(catalog.backups.get(b.id)!, { fail_reason: (e as Error).message }));
          throw e;
        }
      },
      dropped(job, reason) {
        const b = catalog.backups.get(job.backup_id);
        if (b?.status === 'deleting') catalog.transition(b.id, ['deleting'], 'error_deleting', { owner: null, fail_reason: reason });
      },
    },
  };
}

/** a reset-state asked for while the restore ran: applied once the backup is back from `restoring` */
function applyReset(app: Appliance, jobs: JobStore, job: JobRecord): void {
  const cancel = jobs.get(job.id)?.cancel ?? job.cancel;
  const to = cancel?.reset_to;
  if (!to) return;
  const b = app.catalog.backups.get(job.backup_id);
  if (!b || b.status === to) return;
  try {
    const out = app.catalog.transition(b.id, ['available', 'error'], to as BackupStatus, { fail_reason: to === 'error' ? (cancel?.reason ?? 'reset to error') : null, owner: null, updated_at: now() });
    app.events.emit('backup.reset_status', b.id, backupPayload(out));
  } catch (e) {
    if (!(e instanceof ConflictError)) throw e;
  }
}
