/**
 * Backups as NBD exports. Every available backup is exported read-only as
 * `VOLUME@BACKUP` (backup name, or id when names clash), also reachable as `VOLUME@ID` and
 * the plain backup id; `...+overlay` is the same backup behind a copy-on-write overlay that
 * takes writes into scratch space, shared by every connection to it and discarded when
 * the last one disconnects. An attached backup holds a reader lease, so deleting it is
 * refused until it is detached.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../../nbd/blockdev.js';
import type { ExportInfo } from '../../nbd/server.js';
import type { BackupRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { BackupDevice } from '../devices/backup-device.js';
import { CowOverlay } from '../devices/overlay.js';
import type { ChunkReader } from '../read/chunk-reader.js';
import type { ExportSource } from './registry.js';
import { runBackup, startBackup } from '../engine/backup.js';

export const OVERLAY_SUFFIX = '+overlay';

export interface OverlaySaveRequest {
  name: string;
  description: string;
  requested_at: string;
}
export const overlaySaveKey = (backupId: string): string => `overlay-save:${backupId}`;

/** The export name users see for a backup. */
export function exportName(all: BackupRecord[], b: BackupRecord): string {
  const clash = all.some((x) => x.id !== b.id && x.volume_id === b.volume_id && x.name === b.name && x.status === 'available');
  return `${b.volume_name}@${clash ? b.id : b.name}`;
}

export class BackupExports implements ExportSource {
  private readonly leases = new WeakMap<BlockDevice, string>();
  private readonly overlays = new Map<string, { dev: CowOverlay; refs: number; lease: string }>();

  constructor(
    private readonly app: Appliance,
    private readonly chunks: ChunkReader,
  ) {}

  private available(): BackupRecord[] {
    return this.app.catalog.listBackups().filter((b) => b.status === 'available');
  }

  list(): ExportInfo[] {
    const all = this.available();
    return all.flatMap((b) => {
      const name = exportName(all, b);
      const desc = `backup ${b.id} of volume ${b.volume_name}, ${b.created_at}${b.description ? `: ${b.description}` : ''}`;
      return [
        { name, description: desc },
        { name: name + OVERLAY_SUFFIX, description: `${desc} (writable overlay, writes discarded on last disconnect)` },
      ];
    });
  }

  resolve(name: string): BackupRecord | undefined {
    const all = this.available();
    const byId = all.find((b) => b.id === name);
    if (byId) return byId;
    const at = name.lastIndexOf('@');
    if (at <= 0) return undefined;
    const vol = name.slice(0, at);
    const ref = name.slice(at + 1);
    const mine = all.filter((b) => b.volume_name === vol);
    const hit = mine.find((b) => b.id === ref);
    if (hit) return hit;
    const named = mine.filter((b) => b.name === ref);
    return named.length === 1 ? named[0] : undefined;
  }

  private device(b: BackupRecord): BackupDevice {
    return new BackupDevice(b.size_bytes, b.chunk_size, this.app.catalog.mapReader(b), this.chunks, { label: `backup ${b.id}` });
  }

  async open(name: string): Promise<BlockDevice | null> {
    const overlay = name.endsWith(OVERLAY_SUFFIX);
    const b = this.resolve(overlay ? name.slice(0, -OVERLAY_SUFFIX.length) : name);
    if (!b) return null;
    if (!overlay) {
      const dev = this.device(b);
      this.leases.set(dev, this.app.catalog.addReaderLease(b.id, `nbd:${name}:${randomUUID().slice(0, 8)}`));
      return dev;
    }
    let o = this.overlays.get(b.id);
    if (!o) {
      const dir = path.join(this.app.config.dataDir, 'scratch');
      fs.mkdirSync(dir, { recursive: true });
      const dev = await CowOverlay.create(this.device(b), path.join(dir, `overlay-${b.id}-${process.pid}.img`));
      o = { dev, refs: 0, lease: this.app.catalog.addReaderLease(b.id, `nbd-overlay:${b.id}`) };
      this.overlays.set(b.id, o);
    }
    o.refs++;
    return o.dev;
  }

  async release(_name: string, dev: BlockDevice): Promise<void> {
    const lease = this.leases.get(dev);
    if (lease) {
      this.leases.delete(dev);
      this.app.catalog.removeReaderLease(lease);
      return;
    }
    for (const [id, o] of this.overlays) {
      if (o.dev !== dev) continue;
      if (--o.refs > 0) return;
      this.overlays.delete(id);
      try {
        await this.saveIfRequested(id, o.dev);
      } finally {
        this.app.catalog.removeReaderLease(o.lease);
        await o.dev.close();
      }
    }
  }

  /** `blockgate export save` asked for this overlay to become a backup when its last client left */
  private async saveIfRequested(backupId: string, dev: CowOverlay): Promise<void> {
    const key = overlaySaveKey(backupId);
    const req = this.app.catalog.meta.get(key) as OverlaySaveRequest | undefined;
    if (!req) return;
    this.app.catalog.meta.removeSync(key);
    const b = this.app.catalog.backups.get(backupId)!;
    try {
      const rec = await startBackup(this.app, { volume: b.volume_id, force: true, name: req.name, description: req.description || `saved from the overlay of backup ${b.id}` });
      const done = await runBackup(this.app, rec, undefined, dev);
      this.onSaved?.(done.id, req.name);
    } catch (e) {
      this.onSaved?.(null, req.name, e as Error);
    }
  }

  onSaved?: (backupId: string | null, name: string, error?: Error) => void;

  async closeAll(): Promise<void> {
    for (const [id, o] of this.overlays) {
      this.overlays.delete(id);
      this.app.catalog.removeReaderLease(o.lease);
      await o.dev.close();
    }
  }
}
