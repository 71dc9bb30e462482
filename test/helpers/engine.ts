/** Drives the engine in-process for tests: volumes from buffers, backups, restores to buffers. */
import fs from 'node:fs';
import path from 'node:path';
import type { Appliance } from '../../gateway/appliance.js';
import { runBackup, startBackup } from '../../gateway/engine/backup.js';
import { prepareRestore, runRestore } from '../../gateway/engine/restore.js';
import { createVolume } from '../../gateway/engine/volumes.js';
import type { BackupRecord } from '../../catalog/records.js';

export async function volumeFrom(app: Appliance, name: string, data: Buffer) {
  const file = path.join(app.config.dataDir, `${name}.src`);
  fs.writeFileSync(file, data);
  return createVolume(app, { name, file });
}

export function rewrite(app: Appliance, name: string, data: Buffer): void {
  fs.writeFileSync(app.catalog.volume(name).path, data);
}

export async function backup(app: Appliance, volume: string, opts: { incremental?: boolean; name?: string } = {}): Promise<BackupRecord> {
  return runBackup(app, await startBackup(app, { volume, ...opts }));
}

export async function restoreToBuffer(app: Appliance, backupRef: string): Promise<Buffer> {
  const { backup: b, target } = await prepareRestore(app, { backup: backupRef });
  const v = await runRestore(app, b, target);
  return fs.readFileSync(v.path);
}
