/**
 * Volumes: registering a raw image file or block device, or creating a new sparse file,
 * and removing them. Names are plain (no path separators), unique, and typeable.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { ConflictError } from '../../catalog/catalog.js';
import type { VolumeRecord } from '../../catalog/records.js';
import { FileVolume, volumeFileSize } from '../../drivers/volume/file.js';
import type { Appliance } from '../appliance.js';
import { checkName } from '../names.js';
import { createRbdVolume } from './volumes-rbd.js';

/** a volume name becomes volumes/<name>.img: the one check of gateway/names.ts */
export function checkVolumeName(name: string): string {
  return checkName('volume', name);
}

export interface CreateVolumeOptions {
  name: string;
  size?: number;
  file?: string;
  /** an RBD image POOL/IMAGE (created when size is given), with its cluster's conf and user */
  rbd?: string;
  cephConf?: string;
  cephUser?: string;
  projectId?: string;
  userId?: string;
}

export async function createVolume(app: Appliance, opts: CreateVolumeOptions): Promise<VolumeRecord> {
  const name = checkVolumeName(opts.name);
  const ids = { project_id: opts.projectId ?? 'default', user_id: opts.userId ?? 'admin' };
  if (app.catalog.volumeNames.get(name) !== undefined) throw new ConflictError(`a volume named "${name}" already exists`);
  if (opts.rbd) {
    if (opts.file) throw new Error('give either --rbd or --file, not both');
    return createRbdVolume(app, name, { rbd: opts.rbd, size: opts.size, cephConf: opts.cephConf, cephUser: opts.cephUser }, ids);
  }
  if (opts.file) {
    if (opts.size !== undefined) throw new Error('give either --size (a new volume) or --file (an existing image or device), not both');
    const file = path.resolve(opts.file);
    const { size } = await volumeFileSize(file);
    return app.catalog.addVolume({ name, driver: 'file', path: file, size, status: 'available', managed: false, ...ids });
  }
  if (opts.size === undefined || opts.size <= 0) throw new Error('a new volume needs --size greater than 0 (or --file for an existing image)');
  await fs.mkdir(app.volumesDir, { recursive: true, mode: 0o700 });
  const file = path.join(app.volumesDir, `${name}.img`);
  await FileVolume.create(file, opts.size).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === 'EEXIST' ? `${file} already exists` : `cannot create ${file}: ${e.message}`);
  });
  try {
    return app.catalog.addVolume({ name, driver: 'file', path: file, size: opts.size, status: 'available', managed: true, ...ids });
  } catch (e) {
    await fs.rm(file, { force: true });
    throw e;
  }
}

export async function deleteVolume(app: Appliance, ref: string): Promise<VolumeRecord> {
  const { catalog } = app;
  const v = catalog.volume(ref);
  if (v.status === 'restoring-backup' || v.status === 'in-use') throw new ConflictError(`volume ${v.name} is ${v.status}; it cannot be deleted now`);
  const creating = catalog.listBackups(v.id).filter((b) => b.status === 'creating');
  if (creating.length) throw new ConflictError(`volume ${v.name} is being backed up (backup ${creating[0]!.id}); wait or cancel it first`);
  catalog.removeVolume(v.id);
  if (v.managed) await fs.rm(v.path, { force: true });
  return v;
}

/** Marks a volume in-use (attached to an instance) or available again. */
export function setAttached(app: Appliance, ref: string, attached: boolean): VolumeRecord {
  const v = app.catalog.volume(ref);
  const want = attached ? 'available' : 'in-use';
  if (v.status !== want) throw new ConflictError(`volume ${v.name} is ${v.status}; it must be ${want}`);
  return app.catalog.updateVolume(v.id, () => ({ status: attached ? 'in-use' : 'available' }));
}
