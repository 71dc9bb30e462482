/**
 * Delete of any backup, full or incremental: its map root and manifest go, its record is
 * kept as `deleted` (as Cinder keeps deleted rows). Other backups never depend on it for
 * reading, since every map is complete; data no one references any more is reclaimed by GC.
 * `--force` cancels a backup still being created.
 *
 * A protected backup (`backup protect`) is never deleted, and neither is one held by a
 * reader (NBD export, mount, verify): both are checked in the transaction that moves the
 * backup to `deleting`, so a protect or an attach racing the delete either wins or is refused.
 */
import { ConflictError, NotFoundError, ownerAlive, ownerHere } from '../../catalog/catalog.js';
import { type BackupRecord, type BackupStatus, now } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';

const DELETABLE: BackupStatus[] = ['available', 'error', 'error_deleting', 'creating'];

function protectedError(b: BackupRecord): ConflictError {
  return new ConflictError(`backup ${b.id} is protected; unprotect it first`);
}

export async function deleteBackup(app: Appliance, ref: string, opts: { force?: boolean } = {}): Promise<BackupRecord> {
  const begun = beginDelete(app, ref, opts);
  return begun.cancelRequested ? begun.backup : completeDelete(app, begun.backup.id);
}

/**
 * The checks and the move to `deleting` (owned by this process), in one transaction; a
 * creating backup with a live owner is only marked (cancelRequested: its job settles it).
 * completeDelete then removes the manifest and the map: the job module runs the two apart.
 */
export function beginDelete(app: Appliance, ref: string, opts: { force?: boolean } = {}): { backup: BackupRecord; cancelRequested: boolean } {
  const { catalog } = app;
  const b = catalog.backupRecord(ref);
  if (b.status === 'deleted') throw new ConflictError(`backup ${b.id} is already deleted`);
  if (b.protected) throw protectedError(b);
  if (b.status === 'restoring') throw new ConflictError(`backup ${b.id} is restoring; cancel the restore first`);
  if (b.status === 'creating') {
    if (!opts.force) throw new ConflictError(`backup ${b.id} is being created; use --force to cancel it`);
    if (ownerAlive(b.owner)) {
      // the running job sees `deleting`, stops, and settles the record as deleted
      return { backup: catalog.transition(b.id, ['creating'], 'deleting', { fail_reason: 'cancel requested by delete --force' }), cancelRequested: true };
    }
  }
  let out!: BackupRecord;
  catalog.env.transactionSync(() => {
    const cur = catalog.backups.get(b.id);
    if (!cur) throw new NotFoundError('backup', b.id);
    if (cur.protected) throw protectedError(cur);
    const leases = catalog.readerLeases(b.id);
    if (leases.length) throw new ConflictError(`backup ${b.id} is attached (${leases.join(', ')}); detach it before deleting`);
    if (!DELETABLE.includes(cur.status)) throw new ConflictError(`backup ${b.id} is ${cur.status}; it must be ${DELETABLE.join(' or ')}`);
    out = { ...cur, status: 'deleting', owner: ownerHere(), updated_at: now() };
    catalog.backups.putSync(b.id, out);
  });
  return { backup: out, cancelRequested: false };
}

/** Removes the manifest and map of a backup beginDelete moved to `deleting`: `deleted`, or `error_deleting`. */
export async function completeDelete(app: Appliance, id: string): Promise<BackupRecord> {
  const { catalog, repo } = app;
  try {
    await repo.deleteManifest(id);
    catalog.env.transactionSync(() => {
      catalog.maps.removeSync(id);
    });
    return catalog.transition(id, ['deleting'], 'deleted', { owner: null });
  } catch (e) {
    catalog.transition(id, ['deleting'], 'error_deleting', { owner: null, fail_reason: (e as Error).message });
    throw e;
  }
}

/** Sets or clears a backup's protection; a backup being deleted (or deleted) cannot be protected. */
export function setProtected(app: Appliance, ref: string, on: boolean): BackupRecord {
  const { catalog } = app;
  const id = catalog.backupRecord(ref).id;
  let out!: BackupRecord;
  catalog.env.transactionSync(() => {
    const cur = catalog.backups.get(id);
    if (!cur) throw new NotFoundError('backup', id);
    if (on && (cur.status === 'deleted' || cur.status === 'deleting')) throw new ConflictError(`backup ${id} is ${cur.status}; it cannot be protected`);
    out = { ...cur, protected: on, updated_at: now() };
    catalog.backups.putSync(id, out);
  });
  return out;
}
