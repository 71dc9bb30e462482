/**
 * Delete of any backup, full or incremental: its map root and manifest go, its record is
 * kept as `deleted` (as Cinder keeps deleted rows). Other backups never depend on it for
 * reading, since every map is complete; data no one references any more is reclaimed by GC.
 * `--force` cancels a backup still being created.
 */
import { ConflictError, ownerAlive, ownerHere } from '../../catalog/catalog.js';
import type { BackupRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';

export async function deleteBackup(app: Appliance, ref: string, opts: { force?: boolean } = {}): Promise<BackupRecord> {
  const { catalog, repo } = app;
  const b = catalog.backupRecord(ref);
  if (b.status === 'deleted') throw new ConflictError(`backup ${b.id} is already deleted`);
  if (b.status === 'restoring') throw new ConflictError(`backup ${b.id} is restoring; cancel the restore first`);
  if (b.status === 'creating') {
    if (!opts.force) throw new ConflictError(`backup ${b.id} is being created; use --force to cancel it`);
    if (ownerAlive(b.owner)) {
      // the running job sees `deleting`, stops, and settles the record as deleted
      return catalog.transition(b.id, ['creating'], 'deleting', { fail_reason: 'cancel requested by delete --force' });
    }
  }
  const leases = catalog.readerLeases(b.id);
  if (leases.length) throw new ConflictError(`backup ${b.id} is attached (${leases.join(', ')}); detach it before deleting`);
  catalog.transition(b.id, ['available', 'error', 'error_deleting', 'creating'], 'deleting', { owner: ownerHere() });
  try {
    await repo.deleteManifest(b.id);
    catalog.env.transactionSync(() => {
      catalog.maps.removeSync(b.id);
    });
    return catalog.transition(b.id, ['deleting'], 'deleted', { owner: null });
  } catch (e) {
    catalog.transition(b.id, ['deleting'], 'error_deleting', { owner: null, fail_reason: (e as Error).message });
    throw e;
  }
}
