/**
 * Restore's first step, shared by every kind of target: check the backup and the target (or
 * make a new volume), and claim both; nothing is changed if it throws.
 */
import path from 'node:path';
import { ConflictError, ownerHere } from '../../catalog/catalog.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import { FileVolume } from '../../drivers/volume/file.js';
import type { Appliance } from '../appliance.js';
import { checkName } from '../names.js';

export interface RestoreOptions {
  backup: string;
  /** existing volume to restore into; absent: a new volume is created */
  volume?: string;
  /** name of the new volume when none is given */
  newName?: string;
}

export class BlockReadError extends Error {
  constructor(backup: BackupRecord, index: number, cause: Error) {
    super(`backup ${backup.id} block ${index} (offset ${index * backup.chunk_size}): ${cause.message}`);
    this.name = 'BlockReadError';
  }
}

/** Checks everything and claims backup and target; nothing is changed if it throws. */
export async function prepareRestore(app: Appliance, opts: RestoreOptions): Promise<{ backup: BackupRecord; target: VolumeRecord }> {
  const { catalog } = app;
  // a new volume's name becomes volumes/<name>.img: refused before anything is looked up or made
  if (!opts.volume && opts.newName !== undefined) checkName('volume', opts.newName);
  const backup = catalog.backupRecord(opts.backup);
  if (backup.status !== 'available') throw new ConflictError(`backup ${backup.id} is ${backup.status}; only an available backup can be restored`);
  let target: VolumeRecord;
  if (opts.volume) {
    target = catalog.volume(opts.volume);
    if (target.status !== 'available') throw new ConflictError(`volume ${target.name} is ${target.status}; a restore needs an available volume`);
    const size = await app.volumeDriver(target).size();
    if (size < backup.size_bytes) {
      throw new ConflictError(`volume ${target.name} is ${size} bytes, smaller than backup ${backup.id} (${backup.size_bytes} bytes); restore into a volume at least as large`);
    }
  } else {
    const name = checkName('volume', opts.newName ?? uniqueName(app, `restore-${backup.name}`));
    const file = path.join(app.volumesDir, `${name}.img`);
    await import('node:fs/promises').then((fs) => fs.mkdir(app.volumesDir, { recursive: true, mode: 0o700 }));
    await FileVolume.create(file, backup.size_bytes);
    target = catalog.addVolume({ name, driver: 'file', path: file, size: backup.size_bytes, status: 'available', managed: true, project_id: backup.project_id, user_id: backup.user_id });
  }
  catalog.claimRestoreTarget(target.id, { idle: true });
  try {
    catalog.transition(backup.id, ['available'], 'restoring', { owner: ownerHere() });
  } catch (e) {
    catalog.releaseRestoreTarget(target.id);
    throw e;
  }
  target = catalog.updateVolume(target.id, () => ({ status: 'restoring-backup', status_reason: null }));
  return { backup, target };
}

function uniqueName(app: Appliance, base: string): string {
  const safe = base.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 80);
  for (let n = 0; ; n++) {
    const name = n ? `${safe}-${n}` : safe;
    try {
      app.catalog.volume(name);
    } catch {
      return name;
    }
  }
}
