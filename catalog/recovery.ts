/**
 * The recovery policy of the catalog: what becomes of an operation whose process died
 * (killed, crashed), applied on the next open.
 */
import { type LockStores, anyRestoringInto } from './locks.js';
import { ownerAlive } from './owners.js';
import { type BackupRecord, now } from './records.js';
import { resumableRestores } from './sessions.js';

/**
 * Finds operations whose process died and settles them: a backup left `creating` becomes
 * `error` (its partial data is reclaimed by GC), a restore left running returns the backup to
 * `available` and marks the target volume unusable. Locks of dead owners are dropped.
 */
export function recoverInterrupted(c: LockStores): BackupRecord[] {
  const settled: BackupRecord[] = [];
  // an instant-restore session resumes when its daemon restarts: its backup and target stay as they are
  const resumable = resumableRestores(c.env);
  c.env.transactionSync(() => {
    for (const { key, value } of c.locks.getRange({})) {
      if (!ownerAlive(value)) c.locks.removeSync(key);
    }
    for (const { value: b } of c.backups.getRange({})) {
      if (!b.owner && b.status === 'creating') {
        // no process owns it (a hand-over that never completed): nobody will finish it
        c.backups.putSync(b.id, { ...b, status: 'error', fail_reason: 'interrupted: no process was running it', updated_at: now() });
        settled.push(c.backups.get(b.id)!);
        continue;
      }
      if (!b.owner || ownerAlive(b.owner)) continue;
      const why = `interrupted: the process running it (pid ${b.owner.pid}) ended before it finished`;
      let next: BackupRecord | undefined;
      if (b.status === 'creating') next = { ...b, status: 'error', fail_reason: why, owner: null };
      else if (b.status === 'restoring' && !resumable.backups.has(b.id)) next = { ...b, status: 'available', owner: null };
      else if (b.status === 'deleting') next = { ...b, status: 'error_deleting', fail_reason: why, owner: null };
      if (next) {
        next.updated_at = now();
        c.backups.putSync(b.id, next);
        settled.push(next);
      }
    }
    for (const { value: v } of c.volumes.getRange({})) {
      if (v.status === 'restoring-backup' && !resumable.volumes.has(v.id) && !anyRestoringInto(c, v.id)) {
        c.volumes.putSync(v.id, { ...v, status: 'error_restoring', status_reason: 'the restore into it was interrupted', updated_at: now() });
      }
    }
  });
  return settled;
}
