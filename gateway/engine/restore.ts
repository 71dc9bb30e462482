/**
 * Restore: a backup into a new volume or an existing one of the same size or larger.
 * Chunks are fetched and verified in parallel and written at their offsets (restore-copy.ts,
 * the copy `restore --rbd` uses too); holes are not written to a sparse file target (it is
 * made sparse first), and are written as zeroes to a block device. The backup is `restoring` meanwhile and returns to `available`; a failure
 * marks the target volume `error_restoring` with the reason.
 */
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import type { Progress } from './backup.js';
import { copyBackup } from './restore-copy.js';
import { restoreRbd } from './restore-rbd.js';

export { BlockReadError, prepareRestore, type RestoreOptions } from './restore-target.js';

export async function runRestore(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<VolumeRecord> {
  const { catalog } = app;
  try {
    if (target.driver === 'rbd') await restoreRbd(app, backup, target, progress); // rbd import-diff
    else await restoreToDevice(app, backup, target, progress);
    return catalog.updateVolume(target.id, () => ({ status: 'available', status_reason: null }));
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    catalog.updateVolume(target.id, () => ({ status: 'error_restoring', status_reason: reason }));
    throw e;
  } finally {
    if (catalog.backups.get(backup.id)?.status === 'restoring') catalog.transition(backup.id, ['restoring'], 'available', { owner: null });
    catalog.releaseRestoreTarget(target.id);
  }
}

/** Restore into a file or block device: holes are skipped in a sparse file (made sparse first), zeroed on a device. */
async function restoreToDevice(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<void> {
  const dev = await app.volumeDriver(target).open('write');
  try {
    const sparse = !!dev.sparseFile;
    if (sparse) await dev.makeSparse!();
    await copyBackup(
      app,
      backup,
      {
        write: (offset, data) => dev.write!(offset, data),
        hole: async (offset, length) => {
          if (!sparse) await dev.zero!(offset, length);
        },
        writesHoles: !sparse,
      },
      progress,
    );
    await dev.flush?.();
  } finally {
    await dev.close?.();
  }
}
