/**
 * After a restart: every job a dead process left queued or running ends, or resumes where that
 * is safe, before the queue dispatches anything. Appliance.open has already settled the
 * records (catalog.recoverInterrupted: creating → error, restoring → available with the target
 * error_restoring, deleting → error_deleting); here, as Cinder's backup manager does at init:
 *
 *   backup, never started   resumed (nothing was read yet): creating again, queued again
 *   backup, running         ended: the backup `error` with its fail_reason ("interrupted ...")
 *   restore                 ended: backup `available`, the target `error_restoring`
 *   delete                  resumed: deleting again, queued again (a delete can always be redone)
 *
 * Then reservations of dead processes are dropped and volumes left `backing-up` return to
 * their previous status.
 */
import { ownerAlive, ownerHere } from '../../catalog/catalog.js';
import type { Reservation } from '../../catalog/quotas.js';
import { now } from '../../catalog/records.js';
import { beginDelete } from '../engine/delete.js';
import { backupPayload, endBackingUp } from './handlers.js';
import type { JobService } from './service.js';

export interface RecoverySummary {
  resumed: string[];
  failed: string[];
}

export function recoverJobs(s: JobService): RecoverySummary {
  const { app, store, queue, quotas } = s;
  const { catalog } = app;
  const out: RecoverySummary = { resumed: [], failed: [] };
  const fail = (id: string, why: string) => {
    store.update(id, () => ({ status: 'error', error: why, ended_at: now() }));
    out.failed.push(id);
  };
  for (const job of store.active()) {
    if (ownerAlive(job.owner)) continue;
    const b = catalog.backups.get(job.backup_id);
    if (job.kind === 'backup') {
      const interrupted = b && b.status === 'error' && (b.fail_reason ?? '').startsWith('interrupted');
      if (job.status === 'queued' && !job.cancel && b && interrupted) {
        // nothing of it was read or written: it runs again, under this process
        catalog.env.transactionSync(() => {
          catalog.registerWriter(b.id);
          catalog.backups.putSync(b.id, { ...b, status: 'creating', fail_reason: null, owner: ownerHere(), updated_at: now() });
          const r = job.reservation ? (quotas.db.get(`res:${job.reservation}`) as Reservation | undefined) : undefined;
          if (r) quotas.db.putSync(`res:${r.id}`, { ...r, owner: ownerHere() });
        });
        queue.requeue(job);
        out.resumed.push(job.id);
        continue;
      }
      fail(job.id, b?.fail_reason ?? 'interrupted: the daemon ended before the backup finished');
      quotas.end(job.reservation);
      endBackingUp(app, job.volume_id ?? '', job.backup_id);
      if (b) app.events.emit('backup.create.error', b.id, backupPayload(b));
    } else if (job.kind === 'restore') {
      const why = 'interrupted: the daemon ended before the restore finished';
      if (job.volume_id && catalog.volumes.get(job.volume_id)?.status === 'restoring-backup') catalog.updateVolume(job.volume_id, () => ({ status: 'error_restoring', status_reason: why }));
      fail(job.id, why);
      if (b) app.events.emit('backup.restore.error', b.id, backupPayload(b, { target_volume_id: job.volume_id, fail_reason: why }));
    } else {
      try {
        if (b && (b.status === 'error_deleting' || b.status === 'deleting')) {
          beginDelete(app, b.id);
          queue.requeue(job);
          out.resumed.push(job.id);
          continue;
        }
      } catch (e) {
        fail(job.id, (e as Error).message);
        continue;
      }
      fail(job.id, `backup ${job.backup_id} is ${b?.status ?? 'gone'}`);
    }
  }
  quotas.recover();
  for (const v of catalog.listVolumes()) {
    if (v.status === 'backing-up' && !catalog.listBackups(v.id).some((x) => x.status === 'creating')) endBackingUp(app, v.id, '');
  }
  return out;
}
