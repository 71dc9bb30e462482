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
import type { BlockDevice } from '../../blockdev/types.js';
import type { ExportInfo } from '../../nbd/server.js';
import type { BackupRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { BackupDevice } from '../devices/backup-device.js';
import { CowOverlay } from '../../blockdev/overlay.js';
import type { ChunkReader } from '../read/chunk-reader.js';
import type { ExportSource } from './registry.js';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { runBackup, startBackup } from '../engine/backup.js';

export const OVERLAY_SUFFIX = '+overlay';

export interface OverlaySaveRequest {
  name: string;
  description: string;
  requested_at: string;
  /** the overlay it was made for (its reader-lease label): never applied to a later overlay */
  overlay?: string;
}
export const overlaySaveKey = (backupId: string): string => `overlay-save:${backupId}`;

/** The export name users see for a backup. */
export function exportName(all: BackupRecord[], b: BackupRecord): string {
  const clash = all.some((x) => x.id !== b.id && x.volume_id === b.volume_id && x.name === b.name && x.status === 'available');
  return `${b.volume_name}@${clash ? b.id : b.name}`;
}

export class BackupExports implements ExportSource {
  private readonly leases = new WeakMap<BlockDevice, string>();
  private readonly overlays = new Map<string, { dev: CowOverlay; refs: number; lease: string; label: string }>();

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
    // the lease is taken with a check of the backup's state in one transaction: a delete that
    // slipped in since resolve() makes this refuse (the export is gone), never serve a deleted backup
    const lease = (who: string) => {
      try {
        return this.app.catalog.addReaderLease(b.id, who);
      } catch (e) {
        if (e instanceof ConflictError || e instanceof NotFoundError) return null;
        throw e;
      }
    };
    if (!overlay) {
      const key = lease(`nbd:${name}:${randomUUID().slice(0, 8)}`);
      if (!key) return null;
      const dev = this.device(b);
      this.leases.set(dev, key);
      return dev;
    }
    let o = this.overlays.get(b.id);
    if (!o) {
      const label = `nbd-overlay:${b.id}:${randomUUID().slice(0, 8)}`;
      const key = lease(label);
      if (!key) return null;
      const dir = path.join(this.app.config.dataDir, 'scratch');
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      try {
        const dev = await CowOverlay.create(this.device(b), path.join(dir, `overlay-${b.id}-${process.pid}.img`));
        o = { dev, refs: 0, lease: key, label };
      } catch (e) {
        this.app.catalog.removeReaderLease(key);
        throw e;
      }
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
        await this.saveIfRequested(id, o.dev, o.label);
      } finally {
        this.app.catalog.removeReaderLease(o.lease);
        await o.dev.close();
      }
    }
  }

  /** `blockgate export save` asked for this overlay to become a backup when its last client left */
  private async saveIfRequested(backupId: string, dev: CowOverlay, label: string): Promise<void> {
    const key = overlaySaveKey(backupId);
    const req = this.app.catalog.meta.get(key) as OverlaySaveRequest | undefined;
    if (!req) return;
    this.app.catalog.meta.removeSync(key);
    // a request for another (earlier) overlay of this backup is stale: its writes are gone
    if (req.overlay !== label) return;
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
      // its writes are discarded, so is a save asked for them
      const req = this.app.catalog.meta.get(overlaySaveKey(id)) as OverlaySaveRequest | undefined;
      if (req && req.overlay === o.label) {
        this.app.catalog.meta.removeSync(overlaySaveKey(id));
        this.onSaved?.(null, req.name, new Error('the daemon stopped before the last client disconnected: the overlay was discarded, not saved'));
      }
      this.app.catalog.removeReaderLease(o.lease);
      await o.dev.close();
    }
  }
}
