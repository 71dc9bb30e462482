/**
 * Restore: a backup into a new volume or an existing one of the same size or larger.
 * Chunks are fetched and verified in parallel and written at their offsets; holes are not
 * written to a sparse file target (it is made sparse first), and are written as zeroes to a
 * block device. The backup is `restoring` meanwhile and returns to `available`; a failure
 * marks the target volume `error_restoring` with the reason.
 */
import path from 'node:path';
import { ConflictError, ownerHere } from '../../catalog/catalog.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import { FileVolume } from '../../drivers/volume/file.js';
import type { Appliance } from '../appliance.js';
import { checkName } from '../names.js';
import { SlotChunkReader } from '../read/chunk-reader.js';
import type { Progress } from './backup.js';
import { range, runWindow } from './pipeline.js';

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

export async function runRestore(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<VolumeRecord> {
  const { catalog } = app;
  try {
    if (target.driver === 'rbd') await (await import('./restore-rbd.js')).restoreRbd(app, backup, target, progress); // rbd import-diff
    else await copyBackup(app, backup, target, progress);
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

async function copyBackup(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<void> {
  const { catalog } = app;
  const map = catalog.mapReader(backup);
  const depth = app.config.pipelineDepth;
  const cs = backup.chunk_size;
  const reader = new SlotChunkReader(app.repo, app.pool, cs, depth);
  const dev = await app.volumeDriver(target).open('write');
  const count = Math.ceil(backup.size_bytes / cs);
  let done = 0;
  try {
    if (dev.sparseFile) await dev.makeSparse!();
    await runWindow(
      range(count),
      depth,
      async (i, slot) => {
        const offset = i * cs;
        const len = Math.min(cs, backup.size_bytes - offset);
        const digest = map.entry(i);
        if (digest === null) {
          if (!dev.sparseFile) await dev.zero!(offset, len);
        } else {
          let data: Buffer;
          try {
            data = await reader.read(digest, slot);
          } catch (e) {
            throw new BlockReadError(backup, i, e as Error);
          }
          if (data.length !== len) throw new BlockReadError(backup, i, new Error(`chunk ${digest} holds ${data.length} bytes, expected ${len}`));
          await dev.write!(offset, data);
        }
        done += len;
        progress?.(done, backup.size_bytes);
      },
    );
    await dev.flush?.();
  } finally {
    await dev.close?.();
  }
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
